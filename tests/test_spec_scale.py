"""A large plain DAG is not mistaken for an alias bomb (the bomb check is about expansion)."""

from scheduler.spec import check_bytes, load_bytes


def test_ten_thousand_steps_validate() -> None:
    text = "name: wide\nsteps:\n" + "".join(f"  s{i}: {{image: x, command: ['true']}}\n" for i in range(10_000))
    spec = load_bytes(text, "wide.yaml")
    assert len(spec.steps) == 10_000


def test_checking_gives_the_document_the_spec_is_built_from() -> None:
    text = ("name: two\ndefaults: {image: x}\nsteps:\n  a: {command: [echo, '{{ run_id }}']}\n"
            "  b: {command: [c], depends_on: [a]}\n")
    document = check_bytes(text, "two.yaml")
    assert document == load_bytes(text, "two.yaml").document
    assert document["steps"]["b"] == {"command": ["c"], "depends_on": ["a"]}
