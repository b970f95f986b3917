"""Ray actors as the deadline pool's workers (``rollout.backend=ray``).

The deadline, skip and report logic is ``posttrain.rewards.isolate.DeadlinePool``'s;
this is only how Ray starts, calls and kills a worker. An actor past its deadline
is killed with ``ray.kill`` (a running actor call cannot be cancelled any other
way) and a replacement starts in the background: the other actors keep working,
and the new one takes work once it answers, so no deadline includes a start-up.

``held`` callables are sent once through the object store and rebuilt in each
actor as it starts (a job names one by its index): an object that cannot be
rebuilt on a worker fails the start, with its reason, instead of every call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from posttrain.errors import RolloutError
from posttrain.rewards.base import Job, describe
from posttrain.rewards.isolate import DeadlinePool, Outcome, execute, warm_up


class _Worker:
    """One Ray actor: holds the callables it was started with and runs one job per call."""

    def __init__(self, held: tuple[Callable[..., Any], ...], warmups: list[Job]) -> None:
        self.held = held
        warm_up(warmups)

    def ready(self) -> bool:
        return True

    def call(self, job: Job) -> Any:
        return execute(self.held, job)


class RayBackend:
    """Ray actors in slots. Needs ``ray.init``."""

    def __init__(
        self,
        held: Sequence[Callable[..., Any]] = (),
        warmups: Sequence[Job] = (),
        *,
        what: str = "reward",
        field: str | None = None,
    ) -> None:
        import ray

        self.ray, self.what = ray, what
        try:
            self._held = ray.put(tuple(held))  # sent once, shared by every actor and every replacement
        except Exception as e:
            raise RolloutError(
                f"the {what} function cannot be sent to Ray workers ({describe(e)}); it must be picklable", field=field
            ) from e
        self._warmups = list(warmups)
        self._remote: Any = ray.remote(_Worker)  # Ray's stubs do not follow a class through remote()
        self._actors: dict[int, Any] = {}
        self._refs: dict[int, Any] = {}  # slot -> its ready() call while starting, else its running call

    def start(self, slot: int) -> None:
        if slot in self._actors:
            self.ray.kill(self._actors[slot], no_restart=True)
        actor = self._remote.remote(self._held, self._warmups)
        self._actors[slot], self._refs[slot] = actor, actor.ready.remote()

    def submit(self, slot: int, job: Job) -> bool:
        self._refs[slot] = self._actors[slot].call.remote(job)
        return True  # a dead actor shows as an error of this call

    def ready(self, slots: Sequence[int], timeout: float) -> list[int]:
        by_ref = {self._refs[s]: s for s in slots}
        done, _ = self.ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        return [by_ref[r] for r in done]

    def started(self, slot: int) -> str | None:
        try:
            self.ray.get(self._refs.pop(slot))
        except Exception as e:
            return describe(e)
        return None

    def result(self, slot: int) -> tuple[Outcome, bool]:
        ray = self.ray
        try:
            return Outcome("ok", ray.get(self._refs.pop(slot))), False
        except ray.exceptions.RayActorError as e:  # the actor died (os._exit, out of memory)
            return Outcome("error", error=f"the {self.what} worker died: {describe(e)}"), True
        except ray.exceptions.RayTaskError as e:  # the call raised: the actor is fine
            return Outcome("error", error=describe(e.cause if e.cause is not None else e)), False
        except Exception as e:  # anything else Ray raises (a lost object, a crashed worker): replace the actor
            return Outcome("error", error=f"the {self.what} worker failed: {describe(e)}"), True

    def close(self) -> None:
        for actor in self._actors.values():
            self.ray.kill(actor, no_restart=True)
        self._actors, self._refs = {}, {}


def ray_pool(
    workers: int,
    timeout_s: float,
    *,
    held: Sequence[Callable[..., Any]] = (),
    warmups: Sequence[Job] = (),
    what: str = "reward",
    workers_field: str | None = None,
    timeout_field: str | None = None,
    send_field: str | None = None,
) -> DeadlinePool:
    """A ``DeadlinePool`` of Ray actors; ``send_field`` names the setting when ``held`` cannot be sent."""
    if workers < 1:
        raise RolloutError(f"need at least one {what} worker, got {workers}", field=workers_field)
    backend = RayBackend(held, warmups, what=what, field=send_field)
    return DeadlinePool(
        backend, workers, timeout_s, what=what, workers_field=workers_field, timeout_field=timeout_field
    )
