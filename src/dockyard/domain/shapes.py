"""Instance shapes a deployment may name (ListModelDeploymentShapes), as on OCI.

On a single host a shape is a CPU and memory limit for each instance; Flex shapes take their
size from `modelDeploymentInstanceShapeConfigDetails` within the ranges below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    core_count: int  # OCPUs of a fixed shape; the maximum of a Flex shape
    memory_in_gbs: int
    series: str
    flex: bool = False
    max_memory_per_ocpu_gbs: int = 64

    def wire(self) -> dict[str, object]:
        return {"name": self.name, "coreCount": self.core_count, "memoryInGBs": self.memory_in_gbs, "shapeSeries": self.series}


SHAPES: tuple[Shape, ...] = (
    Shape("VM.Standard.E4.Flex", 64, 1024, "AMD_ROME", flex=True),
    Shape("VM.Standard.E3.Flex", 64, 1024, "AMD_ROME", flex=True),
    Shape("VM.Standard3.Flex", 32, 512, "INTEL_SKYLAKE", flex=True),
    Shape("VM.Optimized3.Flex", 18, 256, "INTEL_SKYLAKE", flex=True),
    Shape("VM.Standard.A1.Flex", 80, 512, "ARM", flex=True),
    Shape("VM.Standard2.1", 1, 15, "INTEL_SKYLAKE"),
    Shape("VM.Standard2.2", 2, 30, "INTEL_SKYLAKE"),
    Shape("VM.Standard2.4", 4, 60, "INTEL_SKYLAKE"),
    Shape("VM.Standard2.8", 8, 120, "INTEL_SKYLAKE"),
    Shape("VM.Standard.E2.1", 1, 8, "AMD_ROME"),
    Shape("VM.Standard.E2.2", 2, 16, "AMD_ROME"),
    Shape("VM.Standard.E2.4", 4, 32, "AMD_ROME"),
)

BY_NAME = {shape.name: shape for shape in SHAPES}
