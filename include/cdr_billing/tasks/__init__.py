"""The bodies of the pipeline's Airflow tasks, one module per task (or per pair of a task and the
list it is mapped over). A body reads its inputs (records from contracts, files from the run's
work directory), calls the stage modules and writes its outputs; the rules live in the stages.
`chain` runs a whole month through these same functions in one process."""

from cdr_billing.tasks.memory import use_task_memory_pool

use_task_memory_pool()
