"""The promises every :class:`~runner.containers.ContainerRuntime` keeps, as ONE suite (huey's ``StorageTests``).

A backend's test class inherits :class:`RuntimeContract` and provides a ``harness`` fixture (a
:class:`Harness`). Each case states what the step does twice: as a real argv for backends that run
containers (Docker), and as a :class:`~tests.kube_emulator.Script` for backends that cannot (the
Kubernetes *emulator*, whose fake kubelet plays the script). Scripts receive what the runtime actually
asked for (argv, env, working dir, read back from the Pod spec), so they check the translation too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from runner.containers import ContainerRuntime, Outcome, labels_for
from scheduler.model import Backoff, StepPlan
from tests.conftest import TEST_PREFIX
from tests.kube_emulator import Exec, Script, busybox

PREFIX = TEST_PREFIX


class Harness(Protocol):
    """What the suite needs from a backend besides the runtime itself."""

    runtime: ContainerRuntime
    image: str
    image_id: str  # what ``Outcome.image_id`` must be for ``image``

    def script(self, script: Callable[[Exec], Script]) -> None:
        """What the next containers do, for a backend that cannot run them (others ignore it)."""

    def live(self) -> list[dict[str, str]]:
        """The labels of every container (Pod) of ``PREFIX`` that exists now."""

    def remove_behind_its_back(self, run_id: str) -> None:
        """Remove the run's container (Pod) as someone else would."""


def plan(image: str, argv: list[str], **overrides: Any) -> StepPlan:
    values: dict[str, Any] = dict(run_id="r1", dag="d", step="s", image=image, argv=tuple(argv), env={},
                                  working_dir=None, timeout=None, cpus=None, memory=None, pull="never",
                                  queue="default", retries=0, backoff=Backoff(), tags={})
    values.update(overrides)
    return StepPlan(**values)


def run(runtime: ContainerRuntime, step: StepPlan, stop: Callable[[], str | None] = lambda: None,
        attempt: int = 1) -> tuple[Outcome, bytes]:
    output = bytearray()
    outcome = runtime.run(step, labels_for(step, attempt, PREFIX), output.extend, stop)
    return outcome, bytes(output)


class RuntimeContract:
    """Inherit and provide a ``harness`` fixture; every test here must pass for every runtime."""

    def test_success_with_output_env_and_working_dir(self, harness: Harness) -> None:
        step = plan(harness.image, ["sh", "-c", 'echo "$GREETING from $(pwd)"'], env={"GREETING": "hi"},
                    working_dir="/tmp")
        harness.script(lambda x: Script(output=f"{x.env['GREETING']} from {x.working_dir}\n".encode()))
        outcome, output = run(harness.runtime, step)
        assert outcome.ok and outcome.exit_code == 0 and outcome.reason is None and outcome.error is None
        assert output == b"hi from /tmp\n"

    def test_declared_outputs_are_collected_at_success(self, harness: Harness) -> None:
        value = "$(id) {{ x }}\n'q'"
        harness.script(lambda x: Script(files={"a": value.encode() + b"\n", "empty": b""})
                       if x.env.get("CONVEYOR_OUTPUTS") == "/conveyor/outputs" else Script(exit_code=9))
        write = 'printf "%s\n" "$V" > $CONVEYOR_OUTPUTS/a; : > $CONVEYOR_OUTPUTS/empty'
        step = plan(harness.image, ["sh", "-c", write], env={"V": value}, outputs=("a", "empty"))
        outcome, _ = run(harness.runtime, step)
        assert outcome.ok, outcome
        assert outcome.outputs == {"a": value, "empty": ""}
        assert harness.live() == []

    def test_a_missing_output_fails_the_attempt(self, harness: Harness) -> None:
        harness.script(lambda x: Script(files={"a": b"1"}))
        outcome, _ = run(harness.runtime, plan(harness.image, ["sh", "-c", "echo 1 > $CONVEYOR_OUTPUTS/a"],
                                               outputs=("a", "b")))
        assert (outcome.exit_code, outcome.reason) == (0, "output_missing") and not outcome.ok
        assert "did not write $CONVEYOR_OUTPUTS/b" in outcome.error

    def test_an_output_over_the_cap_fails_the_attempt(self, harness: Harness, monkeypatch) -> None:
        monkeypatch.setenv("CONVEYOR_OUTPUT_CAP", "100")
        harness.script(lambda x: Script(files={"a": b"z" * 101}))
        write = "head -c 101 /dev/zero > $CONVEYOR_OUTPUTS/a"
        outcome, _ = run(harness.runtime, plan(harness.image, ["sh", "-c", write], outputs=("a",)))
        assert outcome.reason == "output_too_large" and "101 bytes; the cap is 100" in outcome.error

    def test_exit_code(self, harness: Harness) -> None:
        harness.script(busybox)
        outcome, _ = run(harness.runtime, plan(harness.image, ["sh", "-c", "exit 3"]))
        assert (outcome.exit_code, outcome.reason, outcome.error) == (3, "exit_code", "exited with code 3")
        assert not outcome.ok

    def test_argv_is_not_a_shell(self, harness: Harness) -> None:
        harness.script(busybox)  # echo prints its argv; a shell in between would have expanded it
        outcome, output = run(harness.runtime, plan(harness.image, ["echo", "$(id -u); rm -rf /", "`x`", "*"]))
        assert outcome.ok
        assert output == b"$(id -u); rm -rf / `x` *\n"

    def test_timeout_kills_it(self, harness: Harness) -> None:
        harness.script(busybox)
        began = time.monotonic()
        outcome, _ = run(harness.runtime, plan(harness.image, ["sleep", "30"], timeout=1.0))
        assert outcome.reason == "timeout" and "timeout of 1s" in outcome.error
        assert time.monotonic() - began < 10
        assert harness.live() == []

    def test_should_stop_cancels_it(self, harness: Harness) -> None:
        harness.script(busybox)
        began = time.monotonic()
        outcome, _ = run(harness.runtime, plan(harness.image, ["sleep", "30"]),
                         stop=lambda: "cancelled" if time.monotonic() - began > 1 else None)
        assert outcome.reason == "cancelled" and outcome.error == "stopped: cancelled"
        assert time.monotonic() - began < 10
        assert harness.live() == []

    def test_labels_while_it_runs(self, harness: Harness) -> None:
        harness.script(busybox)
        seen: list[dict[str, str]] = []

        def look() -> None:
            seen.extend(harness.live())

        step = plan(harness.image, ["sleep", "2"])
        outcome, _ = run(harness.runtime, step, stop=look, attempt=3)
        assert outcome.ok
        assert seen, "should_stop was never polled while the step ran"
        assert {k: v for k, v in seen[0].items() if k.startswith("dev.conveyor.")} == labels_for(step, 3, PREFIX)

    def test_nothing_left_afterwards(self, harness: Harness) -> None:
        harness.script(busybox)
        for attempt, argv in enumerate((["true"], ["sh", "-c", "exit 1"], ["no-such-command"]), start=1):
            run(harness.runtime, plan(harness.image, argv), attempt=attempt)
        assert harness.live() == []
        assert harness.runtime.orphans(PREFIX, ()) == []

    def test_image_id_and_container_id_recorded(self, harness: Harness) -> None:
        harness.script(busybox)
        outcome, _ = run(harness.runtime, plan(harness.image, ["true"]))
        assert outcome.ok and outcome.image_id == harness.image_id
        assert outcome.container_id
        if outcome.image_digest is not None:
            assert "@sha256:" in outcome.image_digest and outcome.image_digest in outcome.image_id

    def test_command_not_found(self, harness: Harness) -> None:
        harness.script(busybox)
        outcome, _ = run(harness.runtime, plan(harness.image, ["no-such-command", "x"]))
        assert outcome.reason == "command_not_found" and "no-such-command" in outcome.error

    def test_image_not_found(self, harness: Harness) -> None:
        harness.script(lambda x: Script(waiting="ErrImageNeverPull"))
        outcome, _ = run(harness.runtime, plan("conveyor/does-not-exist:1", ["true"]))
        assert outcome.reason == "image_not_found" and "conveyor/does-not-exist:1" in outcome.error
        assert harness.live() == []

    def test_orphans_and_reap(self, harness: Harness) -> None:
        """A running attempt is an orphan unless the caller names it live; reaping it ends the attempt as
        ``container_removed`` (what a reaper, or a person, removing it behind the runtime's back does)."""
        harness.script(busybox)
        step = plan(harness.image, ["sleep", "30"])
        result: list[Outcome] = []
        thread = threading.Thread(target=lambda: result.append(run(harness.runtime, step, attempt=2)[0]))
        began = time.monotonic()
        thread.start()
        try:
            orphans = []
            while not orphans and time.monotonic() - began < 10:
                orphans = harness.runtime.orphans(PREFIX, ())
                time.sleep(0.05)
            assert [(o.run_id, o.step, o.attempt) for o in orphans] == [("r1", "s", 2)]
            assert harness.runtime.orphans(PREFIX, {("r1", "s", 2)}) == []
            assert harness.runtime.orphans("another-prefix", ()) == []
            harness.runtime.reap([o.id for o in orphans])
        finally:
            thread.join(20)
            if not result:
                harness.remove_behind_its_back("r1")
                thread.join(20)
        assert result[0].reason == "container_removed", result[0]
        assert time.monotonic() - began < 15
        assert harness.live() == []
