"""The report's table of measures: a row with its target and whether it is met, or a figure
without one."""

from __future__ import annotations


def status(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


class Table:
    """Markdown rows ``| measure | value | target | |`` appended to ``lines``."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def row(self, name: str, value: float, target: float, higher: bool, fmt: str = "{:.3f}") -> None:
        """A measure with a target: ``higher`` when the value should be at least ``target``."""
        comparison = ">=" if higher else "<="
        met = status(value, target, higher)
        self.lines.append(f"| {name} | {fmt.format(value)} | {comparison} {target} | {met} |")

    def info(self, name: str, value: float, fmt: str = "{:.3f}") -> None:
        """A figure reported as measured, without a target."""
        self.lines.append(f"| {name} | {fmt.format(value)} | | |")
