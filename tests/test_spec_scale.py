"""A large plain DAG is not mistaken for an alias bomb (the bomb check is about expansion)."""

from scheduler.spec import load_bytes


def test_ten_thousand_steps_validate() -> None:
    text = "name: wide\nsteps:\n" + "".join(f"  s{i}: {{image: x, command: ['true']}}\n" for i in range(10_000))
    spec = load_bytes(text, "wide.yaml")
    assert len(spec.steps) == 10_000
