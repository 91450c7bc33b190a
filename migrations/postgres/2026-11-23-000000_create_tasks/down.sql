DROP TABLE task_attempts;
DROP TABLE tasks;
