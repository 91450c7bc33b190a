DROP INDEX tasks_confirmed;
