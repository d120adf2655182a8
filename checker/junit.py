"""JUnit XML for those who do not run crashcheck through pytest (`crashcheck run
--junit FILE`): one testcase per spec, a failure when it does not meet its expectation
(the violation summary in the message, the summary and ops in the text), an error for
a spec that could not be checked. No times or timestamps: the same run gives the same
file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from checker import report
from checker.engine.check import Result


def junit_xml(results: list[Result], errors: list[tuple[str, str]]) -> str:
    """The document for checked `results` and `errors` ((file, message) of specs that
    could not be checked)."""
    failures = sum(not r.ok for r in results)
    suite = ET.Element("testsuite", {
        "name": "crashcheck", "tests": str(len(results) + len(errors)), "failures": str(failures),
        "errors": str(len(errors)), "skipped": "0",
    })
    for r in results:
        case = ET.SubElement(suite, "testcase", {"classname": _classname(r.spec.file),
                                                 "name": Path(r.spec.file).stem, "file": r.spec.file})
        if not r.ok:
            failure = ET.SubElement(case, "failure", {"message": failure_message(r), "type": r.verdict})
            head = [f"{r.spec.file}: {r.spec.name}", failure_message(r)]
            failure.text = "\n".join(head + report.op_lines(r))
    for file, message in errors:
        case = ET.SubElement(suite, "testcase", {"classname": _classname(file), "name": Path(file).stem,
                                                 "file": file})
        ET.SubElement(case, "error", {"message": message, "type": "crashcheck error"})
    root = ET.Element("testsuites", {"name": "crashcheck"})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def failure_message(r: Result) -> str:
    """One line: what was found against what was expected."""
    found = f"{r.verdict}" + (f" of {', '.join(r.violated)}" if r.violated else "")
    wanted = r.expected + (f" of {', '.join(r.spec.expect.invariants)}"
                           if r.spec.expect and r.spec.expect.invariants else "")
    extra = f"; {len(r.mismatched_ops)} op(s) did not fail as expected" if r.mismatched_ops else ""
    why = f" ({r.why})" if r.verdict == "unknown" and r.why else ""
    counts = f"{r.crash_states} crash states, {len(r.violations) + r.omitted} violations"
    return f"{found}{why}, expected {wanted}{extra}: {counts}"


def _classname(file: str) -> str:
    parent = Path(file).parent
    return ".".join(p for p in parent.parts if p not in ("/", ".")) or "crashcheck"


__all__ = ["failure_message", "junit_xml"]
