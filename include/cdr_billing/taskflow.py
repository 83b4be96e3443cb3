"""How a DAG file turns a typed function into a pipeline task: its records rebuilt from XCom on
the way in and turned back into JSON on the way out (contracts), its doc with what the
operator does when it fails, and the failure mail. Shared by every DAG of the project; light
imports only, as DAG files import it at parse time."""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

from airflow.sdk import PokeReturnValue, get_current_context, task

from cdr_billing.alerts import task_failure_mail
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import from_xcom, to_xcom
from cdr_billing.months import context_month
from cdr_billing.run_attempts import RecordedFailureMail
from cdr_billing.run_notes import first_log_line

log = logging.getLogger(__name__)
MAPPED_NAME = "mapped_name"  # what a mapped task's map_index_template shows


def failure_mail(config: PipelineConfig, next_step: str):
    """The failure mail of a task: month, task, the error in one sentence, log link, next step."""
    recipients = list(config.recipients("task_failure"))
    mail = task_failure_mail(recipients, config.billing.timezone, next_step, config.smtp_connection)
    return RecordedFailureMail(mail, config)  # the Billing page's months tried show why


def pipeline_task(
    config: PipelineConfig,
    if_it_fails: str,
    *,
    mapped_name: str | None = None,
    sensor: bool = False,
    **task_args: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a function whose arguments and result are contract records (as annotated) into
    a TaskFlow task (or sensor) named after it, whose log starts with the run's billing month.
    `mapped_name`: for a mapped task, the argument whose `name` (the CDR file's) the UI shows
    for each mapped task instead of its index."""

    def decorate(function: Callable[..., Any]):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            context = get_current_context()
            month = context_month(context, config.billing.timezone)
            log.info(first_log_line(month, context["run_id"]))
            hints = typing.get_type_hints(function)
            bound = signature.bind(*args, **kwargs)
            records = {
                name: from_xcom(hints[name], _as_list(value))
                for name, value in bound.arguments.items()
            }
            if mapped_name:
                context[MAPPED_NAME] = records[mapped_name].name
            result = function(**records)
            if isinstance(result, PokeReturnValue):
                return PokeReturnValue(result.is_done, to_xcom(result.xcom_value))
            return to_xcom(result)

        if mapped_name:
            task_args["map_index_template"] = "{{ " + MAPPED_NAME + " }}"
        return (task.sensor if sensor else task)(
            task_id=function.__name__,
            doc_md=f"{inspect.getdoc(function)}\n\n**If it fails:** {if_it_fails}",
            on_failure_callback=[failure_mail(config, if_it_fails)],
            **task_args,
        )(run)

    return decorate


def _as_list(value: Any) -> Any:
    """A mapped task's results arrive as a lazy sequence, read by index."""
    if hasattr(value, "__getitem__") and not isinstance(value, str | list | tuple | dict):
        return [value[i] for i in range(len(value))]
    return value
