"""The baselines: a bare workflow, and a bare workflow with one local activity."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench_noop")
async def noop(value: int) -> int:
    """Does nothing: what a local activity costs on its own."""
    return value


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    """No activity at all: the server's floor for one workflow."""

    @workflow.run
    async def run(self, value: int) -> int:
        """Returns its input."""
        return value


@workflow.defn(name="BenchLocalActivityWorkflow")
class LocalActivityWorkflow:
    """One local activity: the latency floor of an eagerly started workflow."""

    @workflow.run
    async def run(self, value: int) -> int:
        """Runs one no-op local activity."""
        return await workflow.execute_local_activity(
            noop, value, start_to_close_timeout=timedelta(seconds=5)
        )


@workflow.defn(name="BenchLocalActivitiesWorkflow")
class LocalActivitiesWorkflow:
    """``count`` no-op local activities one after another: what each one costs a worker."""

    @workflow.run
    async def run(self, count: int) -> int:
        """Runs ``count`` no-op local activities in turn."""
        for i in range(count):
            await workflow.execute_local_activity(
                noop, i, start_to_close_timeout=timedelta(seconds=5)
            )
        return count
