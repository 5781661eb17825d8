"""What NCCL_DEBUG=INFO lines say about the network NCCL picked, per process and for the job.

Every process logs its own choice, so one bad node (its aws-ofi-nccl missing, its EFA devices not
in the container) shows only in that node's lines: ``Using network Socket`` among many
``Using network Libfabric``. The verdict is therefore the worst one any process reports, and the
evidence names the host. Lines read (NCCL 2.4 .. 2.29, aws-ofi-nccl 1.x):

- ``NCCL INFO Using network <name>``: Socket, IB, AWS Libfabric / Libfabric (aws-ofi-nccl), or
  another plugin's name (``IBext_v8``, ``NCCL RDMA Plugin v6`` ...).
- ``Channel .. via NET/<name>/<dev>[(<proxy rank>)][/GDRDMA[(PCI)]][/Shared]``: the ``(<rank>)``
  part marks a PXN connection (NCCL >= 2.12), GDRDMA the GPUDirect RDMA path.
- ``NET/OFI Selected provider is <p>[, fabric is <f>] (found N nics)``, ``NET/OFI Initializing
  aws-ofi-nccl <v>``, ``NET/Plugin: Loaded net plugin <name> (vN)``; missing: ``NET/Plugin : No
  plugin found``, ``NET/Plugin: Could not find: libnccl-net.so``; failed: ``NET/OFI aws-ofi-nccl
  initialization failed`` / ``NET/OFI Initializing plugin failed`` (NCCL then uses its own
  transports: sockets on EFA hosts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.nccl.prefix import split_prefix

# Verdicts, worst first: the job's verdict is the worst any process reports.
SOCKET, OFI_OTHER, OTHER, IB, EFA, UNKNOWN = "socket", "ofi-other", "other", "ib", "efa", "unknown"
_WORST_FIRST = (SOCKET, OFI_OTHER, OTHER, IB, EFA)

# "host:pid:tid [dev] NCCL ..." (newer NCCL may put "[date time] " in front of WARN lines).
_SOURCE = re.compile(r"^(?:\[[^\]]*\]\s*)?([^\s:\[]+):(\d+):\d+\s+\[\d+\]")
_PLUGIN_VERSION = re.compile(r"NET/OFI (?:Initializing|Using) (aws-ofi-nccl \S+)")
_PLUGIN_LOADED = re.compile(r"NET/Plugin\s*:?\s*(?:Successfully loaded|Loaded) (?:external |net )?plugin", re.I)
_PLUGIN_MISSING = re.compile(
    r"NET/Plugin\s*:?\s*(?:No plugin found|Could not find|Failed to (?:open|load)|Plugin load returned)", re.I
)
_PLUGIN_FAILED = re.compile(r"NET/OFI (?:aws-ofi-nccl initialization failed|Initializing plugin failed)", re.I)
_PROVIDER = re.compile(r"NET/OFI Selected [Pp]rovider is ([\w;-]+)")
_NICS = re.compile(r"found (\d+) nics")
_NETWORK = re.compile(r"NCCL INFO Using network (.+?)\s*$")
# NET/<name>/<dev>, then "(<proxy rank>)" on PXN connections, then /GDRDMA or /GDRDMA(PCI).
_CHANNEL_NET = re.compile(r"via NET/([^/\s]+(?: [^/\s]+)*)/\d+(?:\(\d+\))?(/GDRDMA(?:\(\w+\))?)?")
_RING_GDR = re.compile(r"use ring PXN \d+ GDR (\d)")
_OFI_NO_PROVIDER = re.compile(r"NET/OFI.*(?:No eligible providers|Could not find any optimal provider)", re.I)


def network_kind(name: str) -> str:
    """'Socket' -> socket, '... Libfabric' -> efa (aws-ofi-nccl), 'IB' -> ib, anything else -> other."""
    if name == "Socket":
        return SOCKET
    if "Libfabric" in name:
        return EFA
    if name == "IB":
        return IB
    return OTHER


@dataclass(frozen=True)
class Transport:
    """The network NCCL used, as its NCCL_DEBUG=INFO lines tell it."""

    verdict: str  # "efa" | "ofi-other" | "socket" | "ib" | "other" | "unknown" (no network lines)
    plugin_loaded: bool | None = None  # the aws-ofi-nccl (or any external net) plugin
    plugin: str | None = None  # e.g. "aws-ofi-nccl 1.7.3-aws"
    plugin_failed: bool = False  # loaded, then its initialization failed
    provider: str | None = None  # libfabric provider: "efa", "tcp;ofi_rxm" ...
    network: str | None = None  # "AWS Libfabric", "Libfabric", "Socket", "IB", "IBext_v8" ...
    gdr: bool | None = None  # GPUDirect RDMA seen on NET channels
    nics: int | None = None
    processes: int = 0  # processes whose network choice was seen
    bad_hosts: tuple[str, ...] = ()  # hosts whose processes gave the verdict, when others did better
    evidence: tuple[str, ...] = ()

    @property
    def socket_fallback(self) -> bool:
        return self.verdict in (SOCKET, OFI_OTHER)

    def summary(self) -> str:
        if self.verdict == UNKNOWN:
            return "unknown (no NCCL_DEBUG=INFO network lines)"
        head = self.verdict
        if self.bad_hosts:
            head += f" on {', '.join(self.bad_hosts[:3])}{' ...' if len(self.bad_hosts) > 3 else ''}"
            head += f" ({len(self.bad_hosts)} of {self.processes} processes)" if self.processes else ""
        parts = [head]
        if self.network:
            parts.append(f"network {self.network}")
        if self.plugin:
            parts.append(self.plugin)
        if self.plugin_failed:
            parts.append("net plugin loaded but failed to initialize")
        elif self.plugin_loaded is False:
            parts.append("net plugin NOT loaded")
        if self.provider:
            parts.append(f"provider {self.provider}" + (f" ({self.nics} NICs)" if self.nics else ""))
        if self.gdr is not None:
            parts.append("GPUDirect RDMA" if self.gdr else "no GPUDirect RDMA")
        return ", ".join(parts)


class _Process:
    def __init__(self) -> None:
        self.networks: list[str] = []
        self.channel_nets: list[str] = []
        self.provider: str | None = None
        self.lines: dict[str, str] = {}

    def kind(self) -> str | None:
        names = self.networks or self.channel_nets
        kinds = {network_kind(n) for n in names}
        if EFA in kinds and self.provider and not self.provider.startswith("efa"):
            kinds = (kinds - {EFA}) | {OFI_OTHER}
        if not kinds and self.provider:
            kinds = {EFA if self.provider.startswith("efa") else OFI_OTHER}
        return next((k for k in _WORST_FIRST if k in kinds), None)


class _Scan:
    """What the NCCL log lines of every process said, read one line at a time."""

    def __init__(self) -> None:
        self.procs: dict[str, _Process] = {}
        self.plugin: str | None = None
        self.provider: str | None = None
        self.nics: int | None = None
        self.loaded: bool | None = None
        self.failed = False
        self.gdr_seen = self.plain_seen = False
        self.ring_gdr: set[str] = set()
        self.evidence: dict[str, str] = {}

    def keep(self, kind: str, line: str) -> None:
        self.evidence.setdefault(kind, line.strip()[:200])

    def read(self, raw: str) -> None:
        if "NCCL" not in raw and "NET/" not in raw:
            return
        _, label, line = split_prefix(raw)
        line = line.strip()
        if "CollNet" in line:  # "Failed to find ncclCollNetPlugin_v4 symbol": the net plugin did load
            return
        m = _SOURCE.match(line)
        key = f"{m.group(1)}:{m.group(2)}" if m else (f"rank {label}" if label is not None else "?")
        if "via NET/" in line:
            self._channels(key, line)
            return
        g = _RING_GDR.search(line)
        if g:
            self.ring_gdr.add(g.group(1))
        elif "NET/" in line or "Using network" in line:
            self._plugin(line)
            self._network(key, line)

    def _channels(self, key: str, line: str) -> None:
        for c in _CHANNEL_NET.finditer(line):
            self.procs.setdefault(key, _Process()).channel_nets.append(c.group(1))
            if c.group(2):
                self.gdr_seen = True
            else:
                self.plain_seen = True
            self.keep("channel", line)

    def _plugin(self, line: str) -> None:
        v = _PLUGIN_VERSION.search(line)
        if v:
            self.plugin, self.loaded = v.group(1), True
            self.keep("plugin", line)
        if _PLUGIN_LOADED.search(line):
            self.loaded = True
            self.keep("plugin", line)
        if _PLUGIN_MISSING.search(line) and self.loaded is None:
            self.loaded = False
            self.keep("plugin", line)
        if "NCCL WARN NET/OFI" in line:
            self.keep("plugin-error", line)  # the first warning says why; the summary lines follow it
        if _PLUGIN_FAILED.search(line):
            self.failed = True
        if _OFI_NO_PROVIDER.search(line):
            self.keep("provider", line)

    def _network(self, key: str, line: str) -> None:
        p = _PROVIDER.search(line)
        if p:
            self.provider = self.provider or p.group(1)
            self.procs.setdefault(key, _Process()).provider = p.group(1)
            self.loaded = True
            self.keep("provider", line)
            n = _NICS.search(line)
            if n:
                self.nics = int(n.group(1))
        n = _NETWORK.search(line)
        if n:
            proc = self.procs.setdefault(key, _Process())
            proc.networks.append(n.group(1))
            proc.lines.setdefault(network_kind(n.group(1)), line)
            self.keep("network", line)

    def _verdict(self, kinds: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        """The worst transport any process used, and the hosts on it when others did better."""
        verdict = next((k for k in _WORST_FIRST if k in kinds.values()), None)
        if verdict is None:  # plugin missing or broken, no network line: NCCL is on its own transports
            return (SOCKET if self.loaded is False or self.failed else UNKNOWN), ()
        bad = [key for key, kind in kinds.items() if kind == verdict]
        if len(bad) == len(kinds):
            return verdict, ()
        line = next((self.procs[key].lines.get(verdict) for key in bad if self.procs[key].lines.get(verdict)), None)
        if line:
            self.evidence = {"network": line[:200], **{k: v for k, v in self.evidence.items() if k != "network"}}
        return verdict, tuple(dict.fromkeys(key.split(":")[0] for key in bad))

    def result(self) -> Transport:
        kinds = {key: proc.kind() for key, proc in self.procs.items() if proc.kind()}
        verdict, bad_hosts = self._verdict(kinds)
        network = None
        for proc in self.procs.values():
            for name in proc.networks or proc.channel_nets:
                if verdict == UNKNOWN or network_kind(name) == verdict or (verdict == OFI_OTHER and "Libfabric" in name):
                    network = network or name
        gdr = True if self.gdr_seen else (False if self.plain_seen else None)
        if gdr is None and len(self.ring_gdr) == 1:  # "Connected all rings, use ring PXN 0 GDR 1" (NCCL >= 2.2x)
            gdr = self.ring_gdr == {"1"}
        order = ("network", "plugin-error", "plugin", "provider", "channel")
        return Transport(
            verdict=verdict, plugin_loaded=self.loaded, plugin=self.plugin, plugin_failed=self.failed,
            provider=self.provider, network=network, gdr=gdr, nics=self.nics, processes=len(kinds),
            bad_hosts=bad_hosts, evidence=tuple(self.evidence[k] for k in order if k in self.evidence),
        )


def detect_transport(lines: list[str]) -> Transport:
    """The verdict of NCCL log lines (launcher prefixes allowed, any rank, any order)."""
    scan = _Scan()
    for raw in lines:
        scan.read(raw)
    return scan.result()


def read_transport(text: str) -> Transport:
    """The transport verdict of any NCCL log text (launcher prefixes allowed), results or not."""
    return detect_transport(text.splitlines())
