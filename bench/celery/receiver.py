#!/usr/bin/env python3
"""The pacifica receiver as its users run it, with a no-op event handler.

The stack Ferry replaces (CherryPy + Celery + RabbitMQ + PeeWee), built from
`pacifica.dispatcher.receiver` the way the pacifica dispatchers (proxymod's
among them) build theirs: `create_peewee_model` on a PeeWee database,
`create_celery_app` with a router whose one route matches the bench's
events, and `create_cherrypy_app` mounted at `/` (POST /receive, GET
/status/<task id>). Only the handler differs: it does nothing and succeeds,
so what is measured is the stack, as Ferry's rows measure Ferry with echo.

Run both halves from this directory, as `ferry-bench celery` does:

    python receiver.py                          # the CherryPy receiver
    celery -A receiver:CELERY_APP worker        # the Celery worker (prefork)

Environment:
    FERRY_CELERY_DB            sqlite (default) or postgres
    FERRY_CELERY_DATABASE_URL  a PeeWee URL; default by FERRY_CELERY_DB:
                               sqlite:///celery-bench.sqlite3, or
                               postgresql://postgres@127.0.0.1:5432/ferry_bench_celery
                               (the database is created if missing)
    FERRY_CELERY_BROKER_URL    default pyamqp://guest:guest@127.0.0.1:5672//
    FERRY_CELERY_QUEUE         the queue (default ferry.bench.celery); the
                               exchanges Celery declares are named
                               ferry.bench.celery*, so nothing else on the
                               broker is touched
    FERRY_CELERY_PORT          the receiver's port (default 8069)
    FERRY_CELERY_ACCESS_LOG    1 keeps CherryPy's access log on the screen
                               (its default); the bench turns it off
"""
import logging
import os
import urllib.parse

import cherrypy
import peewee
from jsonpath2.path import Path
from pacifica.dispatcher.event_handlers import EventHandler
from pacifica.dispatcher.receiver import create_peewee_model
from pacifica.dispatcher.router import Router
from playhouse.db_url import connect

# The event type the bench sends (CloudEvents 0.1, what the receiver takes).
EVENT_TYPE = 'org.ferry.echo'
APP_NAME = 'ferry.bench.celery.app'
RECEIVE_TASK = 'ferry.bench.celery.tasks.receive'

BACKEND = os.getenv('FERRY_CELERY_DB', 'sqlite')
DEFAULT_URLS = {
    'sqlite': 'sqlite:///celery-bench.sqlite3',
    'postgres': 'postgresql://postgres@127.0.0.1:5432/ferry_bench_celery?sslmode=disable',
}
if BACKEND not in DEFAULT_URLS:
    raise SystemExit('FERRY_CELERY_DB must be sqlite or postgres, not {!r}'.format(BACKEND))
DATABASE_URL = os.getenv('FERRY_CELERY_DATABASE_URL', DEFAULT_URLS[BACKEND])
BROKER_URL = os.getenv('FERRY_CELERY_BROKER_URL', 'pyamqp://guest:guest@127.0.0.1:5672//')
QUEUE = os.getenv('FERRY_CELERY_QUEUE', 'ferry.bench.celery')
# The exchanges are the same for every run (a run's queue is its own, and
# the bench deletes it), so that runs leave nothing behind.
EXCHANGES = 'ferry.bench.celery'


class NoopEventHandler(EventHandler):
    """Does nothing and succeeds."""

    def handle(self, event) -> None:
        """Nothing to do."""


DB = connect(DATABASE_URL)
ReceiveTaskModel = create_peewee_model(DB)

ROUTER = Router()
ROUTER.add_route(
    Path.parse_str('$[?(@["eventType"] = "{}")]'.format(EVENT_TYPE)),
    NoopEventHandler(),
)

CELERY_APP = ReceiveTaskModel.create_celery_app(
    ROUTER, APP_NAME, RECEIVE_TASK, broker=BROKER_URL,
)
CELERY_APP.conf.update(
    # The one change from the defaults the brief asks for: a task is acked
    # when it is done, not when a worker takes it (Ferry acks after its
    # status is written).
    task_acks_late=True,
    # A queue of the bench's own, and exchanges of its own for the
    # remote-control and event traffic the workers do by default.
    task_default_queue=QUEUE,
    task_default_exchange=EXCHANGES,
    task_default_routing_key=QUEUE,
    control_exchange=EXCHANGES + '.control',
    event_exchange=EXCHANGES + '.events',
    event_queue_prefix=EXCHANGES + '.ev',
    # Retries until the broker answers (the default), but says so.
    broker_connection_retry_on_startup=True,
)
RECEIVE = CELERY_APP.tasks[RECEIVE_TASK]
APPLICATION = ReceiveTaskModel.create_cherrypy_app(RECEIVE)


def create_postgres_database(url: str) -> None:
    """Create the database of a PostgreSQL URL if it is missing."""
    import psycopg2  # pylint: disable=import-outside-toplevel
    try:
        psycopg2.connect(_libpq(url)).close()
        return
    except psycopg2.OperationalError as exc:
        if 'does not exist' not in str(exc):
            raise
    parsed = urllib.parse.urlparse(url)
    name = parsed.path.lstrip('/')
    admin = psycopg2.connect(_libpq(parsed._replace(path='/postgres').geturl()))
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute('CREATE DATABASE "{}"'.format(name))
    except psycopg2.errors.DuplicateDatabase:
        pass  # another run created it meanwhile
    finally:
        admin.close()


def _libpq(url: str) -> str:
    """PeeWee's postgresql:// scheme as libpq's postgres://."""
    return 'postgres://' + url.split('://', 1)[1]


def main() -> None:
    """Create the table and serve the receiver (CherryPy's defaults)."""
    if isinstance(DB, peewee.PostgresqlDatabase):
        create_postgres_database(DATABASE_URL)
    with DB.connection_context():
        DB.create_tables([ReceiveTaskModel], safe=True)
    cherrypy.config.update({
        'server.socket_host': '127.0.0.1',
        'server.socket_port': int(os.getenv('FERRY_CELERY_PORT', '8069')),
    })
    if os.getenv('FERRY_CELERY_ACCESS_LOG', '1') != '1':
        # A line per request, as Ferry's rows run at RUST_LOG=warn; errors
        # still show.
        APPLICATION.log.access_log.setLevel(logging.WARNING)
    cherrypy.tree.mount(APPLICATION)
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == '__main__':
    main()
