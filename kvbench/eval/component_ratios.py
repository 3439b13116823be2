"""How much each component of a composite method (``combined``) compresses alone, measured by the protocol.

For a method with components (:meth:`kvbench.methods.Method.components`), each component's ratio is
measured on the run's longest context through :class:`~kvbench.eval.protocol.CompressionProtocol`, the
same prefill → compress → bytes as every run: the ``heads`` component as the converted model's plain
cache against the original model's full cache; every other component alone on the converted model,
against that plain cache. Their product is the expected ratio; ``measured`` is the composite's own ratio
on the same tokens (METHODS.md §5).
"""

from __future__ import annotations

from kvbench.eval.protocol import CompressionProtocol
from kvbench.methods import Method


def component_ratios(protocol: CompressionProtocol) -> dict | None:
    """``{<component name>: ratio, ..., "product": x, "measured": y}``, or None for a single method."""
    components = protocol.method.components()
    token_ids = protocol.longest_context
    if not components or not token_ids:
        return None

    def measure(method: Method) -> tuple[int, int]:
        probe = CompressionProtocol(protocol.model, method, protocol.reference_config)
        probe.prefill(token_ids)
        return probe.stats.stored_bytes, probe.stats.full_bytes

    plain, full = measure(Method())
    ratios = {}
    for axis, component in components.items():
        ratios[component.name] = full / plain if axis == "heads" else plain / measure(component)[0]
    product = 1.0
    for ratio in ratios.values():
        product *= ratio
    stored, _ = measure(protocol.method)
    return {**ratios, "product": product, "measured": full / stored}
