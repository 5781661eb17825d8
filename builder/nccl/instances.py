"""GPU instance types: GPU count, intra-node and network peaks, and all_reduce busbw thresholds.

Peaks are physical, per GPU and per direction for the intra-node link (what all_reduce busbw is
measured against on one node) and per node for the network (what it tends to across nodes; the
multi-node peak is the smaller of the two, [BUS]).
Thresholds are fractions of those peaks, applied to the best busbw at large messages (>= 1 GiB):
a smoke check that catches broken setups (sockets instead of EFA, P2P off, a GPU missing), not a
benchmark target. Sources, one per figure:

[A100]   NVIDIA A100 datasheet: NVLink 3 600 GB/s per GPU, both directions -> 300 GB/s each way.
[H100]   NVIDIA H100/H200 SXM datasheets: NVLink 4 900 GB/s per GPU -> 450 GB/s each way.
[PCIe4]  PCI-SIG PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b -> 31.5 GB/s each way (A10G, L4,
         L40S are PCIe 4.0 x16 cards, no NVLink: NVIDIA A10/L4/L40S datasheets).
[P4]     AWS EC2 P4 page: p4d/p4de.24xlarge, 8 x A100 (40/80 GB), NVSwitch, 4 x 100 Gbps EFA.
[P5]     AWS EC2 P5 page: p5.48xlarge 8 x H100, p5e/p5en.48xlarge 8 x H200, 3200 Gbps EFA
         (p5en: EFAv3, 16 x 200 Gbps).
[G5]     AWS EC2 G5 page: g5.48xlarge 8 x A10G, 100 Gbps, EFA.
[G6]     AWS EC2 G6/G6e pages: g6.48xlarge 8 x L4, 100 Gbps; g6e.48xlarge 8 x L40S, 400 Gbps; EFA.
[B200]   NVIDIA Blackwell (B200, GB200) fifth-generation NVLink: 1.8 TB/s per GPU, both directions ->
         900 GB/s each way (NVIDIA GB200 NVL72 / NVL4 announcements).
[P6]     AWS EC2 P6 page: p6-b200.48xlarge 8 x B200, 3200 Gbps EFA (8 x 400 Gbps EFAv4).
[P6E]    AWS ML blog "SageMaker HyperPod support for P6e-GB200 UltraServers" (2025-08): 72 GPUs over
         18 p6e-gb200.36xlarge instances of 4 GPUs, 28.8 Tbps EFAv4 per UltraServer -> 1600 Gbps per
         instance. (Third-party tables give 3200 Gbps; the smaller figure keeps the floor honest.)
[RDMA]   EC2 user guide, "Elastic Fabric Adapter", Supported instance types (RDMA read support):
         Yes for p4d, p4de, p5, p5e, p5en, g6, g6e, p6-b200, p6e-gb200; No for p3dn and g5.
Measured (for the fractions; ../shared/reference/nccl-enroot.md):
[M1]     1 x p4d: ~230 GB/s all_reduce busbw at 1 GB (NVIDIA/nccl issue 527) = 0.77 of 300.
[M2]     1 x 8 x H100: ~370 GB/s ring, ~480 GB/s NVLS (NVIDIA/nccl-tests issue 212) = 0.82+ of 450.
[M3]     2 x p4de: 78 GB/s at 2 GB; 2 x p5: 444 GB/s at 2 GB, 487 at 16 GB (awsome-distributed-training
         nccl-tests README) = 1.1..1.6 x the 50 / 400 GB/s network peak (tree/NVLS at 2 nodes can
         exceed it, NVIDIA/nccl-tests issue 22); 2 x p4d in 2021: 32.8 GB/s at 1 GB (aws-samples/
         aws-efa-eks README) = 0.66.
[M4]     8 x RTX 5090 on PCIe 5.0 (63 GB/s per direction), one node: 28 GB/s all_reduce busbw, 0.44 of
         the link; "on PCI systems, the performance you get is usually determined by the bandwidth
         your CPU and memory can deliver" (NCCL maintainer, NVIDIA/nccl issue 1639).
[A]      engineering assumptions, not measurements: the PCIe-only single-node fraction 0.25, and
         Blackwell nodes judged with the H100 NVSwitch fractions (no public B200 figure was found).
         The PCIe-only single-node fraction 0.25: No public
         g5/g6/g6e.48xlarge all_reduce figure was found; [M4] shows PCIe-only nodes reaching well
         under half their link, bounded by the host, so the floor is set low enough for that and
         still catches a broken node (P2P/SHM off, a GPU missing: busbw falls to a few GB/s).
[BUS]    nccl-tests doc/PERFORMANCE.md: busbw is what each rank moves over its own link per second
         (comparable to the hardware peak whatever the rank count), so it cannot exceed the GPU's
         own link either: across nodes the peak is the smaller of the per-GPU link and the per-node
         network (a PCIe 4.0 x16 g6e GPU caps a 400 Gbps = 50 GB/s node at 31.5 GB/s).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from builder.errors import UsageError

# Fractions of the physical peak that a healthy node or cluster clears at >= 1 GiB.
NVSWITCH_SINGLE = 0.6  # [M1] 0.77, [M2] 0.82: 0.6 leaves room for older NCCL and noisy runs
PCIE_SINGLE = 0.25  # [A] engineering assumption (see [M4]): catches P2P/SHM breakage, not a target
MULTI_NODE = 0.6  # [M3] 0.66 .. 1.6: below 0.6 of the network peak something is wrong

A100_NVLINK = 300.0  # [A100]
H100_NVLINK = 450.0  # [H100]
B200_NVLINK = 900.0  # [B200]
PCIE4_X16 = 31.5  # [PCIe4]


@dataclass(frozen=True)
class Instance:
    name: str
    gpus: int
    gpu: str
    intra: str  # how GPUs in one node talk
    intra_peak: float  # GB/s per GPU per direction
    network_gbps: int  # per node
    efa: bool
    single_fraction: float
    multi_fraction: float = MULTI_NODE
    rdma_read: bool = True  # [RDMA]: FI_EFA_USE_DEVICE_RDMA=1 aborts libfabric where this is False

    @property
    def network_peak(self) -> float:
        """GB/s per node."""
        return self.network_gbps / 8

    def peak(self, nodes: int) -> float:
        """GB/s busbw cannot exceed: the per-GPU link on one node; across nodes also the network [BUS]."""
        return self.intra_peak if nodes <= 1 else min(self.intra_peak, self.network_peak)

    def fraction(self, nodes: int) -> float:
        return self.single_fraction if nodes <= 1 else self.multi_fraction

    def peak_label(self, nodes: int) -> str:
        if nodes <= 1:
            return f"per-GPU {self.intra} peak"
        if self.network_peak <= self.intra_peak:
            return "per-node network peak"
        return f"per-GPU {self.intra} peak (below the {self.network_peak:g} GB/s per-node network)"

    def threshold(self, nodes: int) -> float:
        return round(self.peak(nodes) * self.fraction(nodes), 2)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "network_peak": self.network_peak,
            "multi_node_peak": self.peak(2),
            "single_node_threshold": self.threshold(1),
            "multi_node_threshold": self.threshold(2),
        }


INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        Instance("p4d.24xlarge", 8, "A100 40GB", "NVSwitch NVLink3", A100_NVLINK, 400, True, NVSWITCH_SINGLE),  # [P4]
        Instance("p4de.24xlarge", 8, "A100 80GB", "NVSwitch NVLink3", A100_NVLINK, 400, True, NVSWITCH_SINGLE),  # [P4]
        Instance("p5.48xlarge", 8, "H100 80GB", "NVSwitch NVLink4", H100_NVLINK, 3200, True, NVSWITCH_SINGLE),  # [P5]
        Instance("p5e.48xlarge", 8, "H200 141GB", "NVSwitch NVLink4", H100_NVLINK, 3200, True, NVSWITCH_SINGLE),  # [P5]
        Instance("p5en.48xlarge", 8, "H200 141GB", "NVSwitch NVLink4", H100_NVLINK, 3200, True, NVSWITCH_SINGLE),  # [P5]
        Instance("p6-b200.48xlarge", 8, "B200", "NVSwitch NVLink5", B200_NVLINK, 3200, True, NVSWITCH_SINGLE),  # [P6]
        Instance("p6e-gb200.36xlarge", 4, "GB200", "NVLink5 NVL72", B200_NVLINK, 1600, True,
                 NVSWITCH_SINGLE),  # [P6E]
        Instance("g5.48xlarge", 8, "A10G 24GB", "PCIe 4.0 x16", PCIE4_X16, 100, True, PCIE_SINGLE, rdma_read=False),  # [G5]
        Instance("g6.48xlarge", 8, "L4 24GB", "PCIe 4.0 x16", PCIE4_X16, 100, True, PCIE_SINGLE),  # [G6]
        Instance("g6e.48xlarge", 8, "L40S 48GB", "PCIe 4.0 x16", PCIE4_X16, 400, True, PCIE_SINGLE),  # [G6]
    )
}


def get_instance(name: str) -> Instance:
    try:
        return INSTANCES[name]
    except KeyError:
        known = ", ".join(INSTANCES)
        raise UsageError(f"unknown instance type '{name}': known are {known} (or give --threshold GB/s)") from None


# EFA instances whose RDMA read support matters for old plugins but that are not judged here
# (p3dn: V100 without NVSwitch, no measured fraction) [RDMA].
RDMA_READ_UNJUDGED = {"p3dn.24xlarge": False}


def rdma_read(name: str | None) -> bool | None:
    """Whether the instance's EFA has RDMA read [RDMA]; None when the type is unknown."""
    if name is None:
        return None
    if name in INSTANCES:
        return INSTANCES[name].rdma_read
    return RDMA_READ_UNJUDGED.get(name)
