"""The exceptions torch_chrion raises. Each also inherits the builtin it refines, so
``except ValueError`` and friends keep working in callers that do not know torch_chrion."""

from __future__ import annotations


class ChrionError(Exception):
    """Base of every error torch_chrion raises on purpose."""


class ModelError(ChrionError, ValueError):
    """The model itself is bad: unreadable or corrupt file, checker failure, wrong inputs."""


class UnsupportedOperatorError(ChrionError, NotImplementedError):
    """Operators (or attribute values) torch_chrion cannot run. ``ops`` lists every one found."""

    def __init__(self, message: str, ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.ops = list(ops or [])


class OptionError(ChrionError, ValueError):
    """A bad option: unknown name, wrong type or value out of range."""


class InfeasiblePlanError(ChrionError):
    """No placement meets the requested latency SLO; ``best_ms`` is the best makespan found."""

    def __init__(self, message: str, best_ms: float | None = None) -> None:
        super().__init__(message)
        self.best_ms = best_ms


class PlanError(ChrionError, ValueError):
    """A plan or profile file that cannot be used: bad schema, unknown node or device."""


class ExecutionError(ChrionError, RuntimeError):
    """An operator failed while running a model; the message names the node, lane and op."""


class BuildError(ChrionError, RuntimeError):
    """The C++ extension could not be built or loaded."""


class NotPicklableError(ChrionError, TypeError):
    """A ChrionModule was pickled or deep-copied: it owns running lane threads. The message
    names the way to persist it (``torch_chrion.package`` / ``load_package``, or a saved plan)."""
