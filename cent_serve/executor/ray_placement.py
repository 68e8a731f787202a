"""Where a replica's device actors go on a Ray cluster: a placement group of one `device_resource`
bundle per device by `server.placement` (`place_devices`), a cluster that cannot hold the replicas
refused before anything starts (`check_cluster_holds`), and the bundles in the order of the round
chain (`chain_bundles`)."""
from __future__ import annotations

import logging
import secrets
import time

import ray

from cent_serve.config import CentConfig
from cent_serve.executor.base import StartCancelled, check_start, cluster_gone

log = logging.getLogger("cent_serve.executor.ray_executor")  # the name the log has always shown for its lines


PLACEMENT_CHECK_S = 0.25
"""How often a placement wait asks whether its start-up is still wanted (`check_start`)."""


class PlacementError(ValueError):
    """The cluster cannot host the devices (says what is missing)."""


_replica_hosts: dict[str, int] = {}
"""Ray node id -> how many live executors of this process hold a `replica`-placed group there."""


def replica_hosts(units: dict[str, int], need: int, held: dict[str, int]) -> tuple[list[str], bool]:
    """The nodes a `replica` placement may put `need` devices on (all of them on one node): those
    with `need` units that hold none of this process's other replicas, else (the second item True)
    every node with `need` units; from `units` (node id -> units) and `held` (`_replica_hosts`)."""
    fits = sorted(n for n, k in units.items() if k >= need)
    free = [n for n in fits if not held.get(n)]
    return (free, False) if free or not fits else (fits, True)


_units_seen: dict[str, int] = {}
"""Ray node id -> the `device_resource` units it advertised when this process last saw it alive (a node
id is unique across clusters): how a lost node's units are named (`_lost_units`)."""


def _cluster_units(cfg: CentConfig) -> tuple[dict[str, int], str]:
    """({node id: `device_resource` units} of the cluster's live nodes, a summary naming each node
    and its units); a node advertising units is remembered in `_units_seen`."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    units = {n["NodeID"]: int(n.get("Resources", {}).get(cfg.server.device_resource, 0)) for n in nodes}
    names = {n["NodeID"]: f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes}
    _units_seen.update((n, k) for n, k in units.items() if k)
    return units, ", ".join(f"{names[n]}: {k}" for n, k in sorted(units.items(), key=lambda nk: names[nk[0]]))


def _lost_units(cfg: CentConfig) -> str:
    """The cluster's nodes no longer alive that advertised `device_resource` units, each named with its
    units; "" when the cluster has no such history (a plain Ray). Called when no live node advertises
    units.

    Ray keeps a dead node in `ray.nodes()` ("Alive": False) but not its resources: on Ray 2.60 its
    "Resources" came back {} (ray/_private/state.py `node_table`, the GCS's node table). So the history
    is read from the record the cluster does keep: its placement group table (`placement_group_table`,
    every group the GCS has seen, removed ones included, whoever made them) holds a group of
    `device_resource` bundles that was granted once (its `end_to_end_creation_latency_ms` set): units
    were there, and no live node has them now. A later server joining the cluster reads it too. The
    units of each lost node are named from `_units_seen` where this process saw it alive."""
    from ray.util.placement_group import placement_group_table

    res = cfg.server.device_resource
    dead = [n for n in ray.nodes() if not n.get("Alive")]
    seen = [n for n in dead if n["NodeID"] in _units_seen]
    granted = any(pg.get("stats", {}).get("end_to_end_creation_latency_ms", 0) > 0
                  and any(res in b for b in pg.get("bundles", {}).values())
                  for pg in placement_group_table().values())
    if not (seen or granted):
        return ""
    if seen:
        return ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]}): {_units_seen[n['NodeID']]}" for n in seen)
    names = ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in dead) or "no longer listed"
    return (f"{names} (units not seen by this server: the cluster granted a placement group of {res} bundles "
            "before it joined)")


def check_cluster_holds(cfg: CentConfig, num_devices: int, replicas: int = 1) -> tuple[dict[str, int], str]:
    """Refuse (PlacementError, naming the units each node has and the fix) a cluster advertising
    `device_resource` that cannot hold `replicas` copies of `num_devices` devices, or, for
    `server.placement` replica, has no host with a replica's devices. Reads the cluster once, places
    nothing: what cannot run is refused before anything starts (`cent serve` asks before its first
    replica, `place_devices` before each, a re-created replica's included: one rule for both).
    Returns `_cluster_units`.

    A cluster whose live nodes advertise no units is a plain Ray, which places actors anywhere,
    nothing checked (a local Ray, this process's or one it joined, a `ray.remote` task's), unless
    - it has several live nodes (or none): Ray would scatter the devices over them, one node hop per
      pipeline hop, and `server.placement` could not be applied; or
    - nodes of it that advertised units are gone (`_lost_units`: the cluster's own history, not who
      started its head): a head kept free of devices (deploy/README.md, "The contract") whose last
      node with units was lost. The refusal names those nodes and their units; at a re-creation it is
      the replica's reason to wait: `Replicas` retries it every `server.replica_retry_s`, /health
      naming it, until a node with units joins. Before, the replica came back on the head, its devices placed anywhere."""
    s = cfg.server
    units, summary = _cluster_units(cfg)
    total = sum(units.values())
    lost = _lost_units(cfg) if total == 0 else ""
    fix = f"ray start --resources='{{\"{s.device_resource}\": N}}' (deploy/README.md)"
    if lost:
        raise PlacementError(f"the node(s) that advertised {s.device_resource} units are gone: {lost}, and the live "
                             f"node(s) advertise none ({summary}); start a node with units: {fix}")
    if total == 0 and len(units) != 1:
        has = "the cluster has no live node" if not units else (f"the cluster's {len(units)} nodes advertise no "
                                                                f"{s.device_resource} units ({summary})")
        raise PlacementError(f"{has}, so the devices cannot be placed (server.placement={s.placement!r}): start each "
                             f"node that is to host devices with {fix}")
    if total == 0:
        return units, summary
    if total < num_devices * replicas:  # every replica's, not one's: the first would hold what the last waits for
        copies = f" ({replicas} replicas of {num_devices})" if replicas > 1 else ""
        fewer = (total // num_devices) * num_devices
        raise PlacementError(f"the mapping needs {num_devices * replicas} {s.device_resource} units{copies}; the "
                             f"cluster has {total} ({summary}): add nodes started with ray start --resources="
                             f"'{{\"{s.device_resource}\": N}}' or use --devices {fewer or total}")
    if s.placement == "replica" and not replica_hosts(units, num_devices, {})[0]:
        raise PlacementError(f"server.placement='replica' puts a replica's {num_devices} devices on one host; "
                             f"no host advertises {num_devices} {s.device_resource} units ({summary}): start "
                             f"the hosts with ray start --resources='{{\"{s.device_resource}\": "
                             f"{num_devices}}}' or more, or use --placement spread")
    if s.placement == "replica" and replicas > 1:  # each replica whole on one node: count the nodes' room
        room = sum(k // num_devices for k in units.values())
        if room < replicas:
            raise PlacementError(f"server.placement='replica' puts each replica's {num_devices} devices on one "
                                 f"host; the hosts hold {room} of the {replicas} replicas ({summary}): start the "
                                 f"hosts with more {s.device_resource} units, use --devices {room * num_devices}, "
                                 "or use --placement spread")
    return units, summary


def place_devices(cfg: CentConfig, num_devices: int, replicas: int = 1):
    """A placement group of one `device_resource` bundle per device when the cluster advertises
    that resource (None on a one-node Ray advertising none that never lost a node with units: it places
    actors anywhere; other clusters advertising none are refused, `check_cluster_holds`), by
    `server.placement`: `spread`, `pack`, or `replica` (every device on one node, a node none of
    this process's other replicas holds when one has room). A cluster that cannot hold the
    `replicas` copies of `num_devices` is refused at once (`check_cluster_holds`); otherwise raises
    PlacementError within `server.placement_timeout_s` if the group cannot be granted."""
    from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group, remove_placement_group

    s = cfg.server
    units, summary = check_cluster_holds(cfg, num_devices, replicas)
    total = sum(units.values())
    if total == 0:
        return None
    strategy, selector, shared = s.placement.upper(), None, False
    if s.placement == "replica":
        hosts, shared = replica_hosts(units, num_devices, _replica_hosts)
        strategy, selector = "STRICT_PACK", [{NODE_ID_LABEL_KEY: f"in({','.join(hosts)})"}] * num_devices
    # a name of its own per group: every replica places its devices with the same config
    pg = placement_group([{s.device_resource: 1}] * num_devices, strategy=strategy,
                         name=f"cent-devices-{secrets.token_hex(6)}", bundle_label_selector=selector)
    try:
        _await_granted(pg, s.placement_timeout_s)
    except StartCancelled:
        if not cluster_gone():  # a lost cluster's group went with it: its removal would wait on the dead GCS
            remove_placement_group(pg)
        raise
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        free = int(ray.available_resources().get(s.device_resource, 0))
        raise PlacementError(f"the cluster did not grant {num_devices} {s.device_resource} bundles "
                             f"({s.placement}) within {s.placement_timeout_s:g} s: {free} of the cluster's {total} "
                             f"units are free now (each node's, held or not: {summary}); this server's replicas "
                             "placed so far, or another job, hold the rest (ray status): free some or add units"
                             + (f", or a host with {num_devices} free for --placement replica" if s.placement ==
                                "replica" else "")) from None
    if s.placement == "replica" and shared:  # said once granted: a group that is never granted shares nothing
        log.warning("placement replica: every host with %d %s units already holds a replica of this server, "
                    "so this one shares a host (a host's loss fails both): add a host to keep them apart",
                    num_devices, s.device_resource)
    return pg


def _await_granted(pg, timeout_s: float) -> None:
    """Wait for `pg` to be granted: GetTimeoutError after `timeout_s`; StartCancelled within
    PLACEMENT_CHECK_S once nobody wants the start-up (`check_start`: the server stops, or gives its
    cluster up, while a replica is re-created; a `ray.get` left waiting past `ray.shutdown` ended the
    process the moment it returned, before the server's last line)."""
    ready, deadline = pg.ready(), time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ray.exceptions.GetTimeoutError(f"placement group not granted within {timeout_s:g} s")
        done, _ = ray.wait([ready], timeout=min(left, PLACEMENT_CHECK_S))
        if done:
            ray.get(done)
            return
        check_start()


def _bundle_nodes(pg) -> dict[int, str]:
    """{bundle index: node id} of a granted placement group."""
    from ray.util.placement_group import placement_group_table
    return placement_group_table(pg)["bundles_to_node_id"]


def chain_bundles(pg, first_node: str) -> list[int]:
    """The placement group's bundle indices in chain order: grouped by node, the driver's node
    first, so consecutive devices (the pipeline's neighbours, a unit's partners) share a node and
    a round crosses between nodes once per node, not at every hop (Ray spreads bundle i and i + 1
    over different nodes)."""
    on = _bundle_nodes(pg)
    nodes = sorted(set(on.values()), key=lambda n: (n != first_node, min(i for i, m in on.items() if m == n)))
    return [i for n in nodes for i in sorted(i for i, m in on.items() if m == n)]
