DROP INDEX tasks_by_type_status;
DROP INDEX tasks_by_source;
DROP INDEX tasks_by_type;
DROP INDEX tasks_by_status;
DROP INDEX tasks_by_created;
