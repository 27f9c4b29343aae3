"""Exact search of a malicious server's strategies against the active-mode unmasking rules.

Issue 8 item 5: instead of replaying known attacks, encode every check an honest party makes
(docs/protocol.md; /work/briefs/active_rules.md is the spec this follows) as a satisfiability
problem and ask an exact solver (z3) whether ANY server strategy lets the server learn an honest
party's input on some coordinate. UNSAT is a proof that no strategy exists in the modelled space.

What one instance fixes: a neighbour graph G (model vertex p is ring position p of a Harary
graph, or a party of a complete / hand-built graph), the threshold t, at most ``colluders``
corrupted parties (the config guard 2t > k + c holds), whole-vector or part-wise mode with
``min_holders`` (part-wise: min_holders >= c + 2, the layout's documented precondition), the
number of survivor lists the server may hand out, and the rule (``new``: issue 8; ``old``: the
rule before it as the engine's ``legacy_rule_for_audit()`` hook applies it, what ``--weaken``
brings back: any t valid signatures by survivors anywhere in the graph, and the owner checks
|partners(o) n U3| >= t and, per block, |A_b| >= min_holders and deg_b(o) >= min_holders - 1.
The hook keeps the signed list (U3, D') and the signer's own checks; the older rule that left D'
unsigned gives the server strictly more, so every attack found here works there too).

What the solver chooses (the server's strategy space, all of it at once):
  * which parties collude (any set of size <= c, never the victim; they reveal every share they
    hold, sign any list they are listed in as a survivor, and sign any partner set);
  * the block layout: the holders of the attacked block (part-wise; any set of >= min_holders);
    one block suffices: every check on other blocks only adds refusals, so an attack on a
    multi-block layout is also an attack on its one-block projection;
  * the routing: for every directed graph edge a -> b, whether b gets a's encrypted shares
    (withheld deliveries; b masks with exactly the senders it received, and refuses a delivery
    of fewer than t senders; it then never masks). Deliveries to colluders are always made
    (more shares for the server). Key-directory omissions are dominated: they remove both
    directions, which withholding can do too;
  * up to ``lists`` survivor lists L_j = (U3_j, D'_j), which honest party is shown which list
    (each signs at
    most one, if its own checks pass), and which honest parties get an unmask request (each
    answers at most once, for the list it signed, if its checks pass with every valid signature
    on that list the server holds: showing more valid signatures never makes a check fail);
  * the partner sets colluders claim, per list (any subset of their neighbours).

What the server learns (exact linear algebra, PRG outputs treated as independent uniform pads,
fewer than t Shamir shares as revealing nothing): it holds y_u of every party that masked; it
knows b_u (s_u) when t shares of it were revealed or held by colluders, and all colluder secrets.
On the attacked block, a linear combination sum_u lambda_u y_u is free of unknown pads iff
lambda vanishes on parties with unknown b_u, is equal at both ends of every unknown pairwise
pad present in both masked inputs, and vanishes at the end of a pad present in only one of them.
So the learnable functionals of honest inputs are spanned by the indicator vectors of "free
sets": sets S of honest masked holders with known b_u, closed under unknown pairwise pads. Goals:
  * ``isolate``: S = {victim}: x_victim on the block, exactly;
  * ``thin``: |S| + |colluders| < min_holders (part-wise): a sum the layout promises never to
    reveal, even with all colluders' inputs added;
  * ``split``: two disjoint non-empty free sets: two partial sums of one block (the per-component
    leak; the new rule promises one component per block).
The victim is party 0 WLOG: every graph searched is vertex-transitive (circulant rings, complete
graphs, the Petersen graph) and the layout is a free variable.

Not modelled (stated in the report): anything outside one round (replays across rounds or
sessions, state rollback: issue 8 items 3 and 4); attacks on the cryptography (PRG, X25519,
Shamir, signatures, AES-GCM); non-linear use of the PRG; more lists than ``lists``; graphs other
than those listed; colluders' own inputs are known, so their privacy is not a goal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GOALS = ("isolate", "thin", "split")
#: Not an attack: any free set containing the victim (the legitimate sum). Asked as a sanity
#: check that the encoded checks still let an honest round through (a model that refused
#: everything would prove every attack impossible, vacuously).
ANY = "any"
RULES = ("new", "old")
VICTIM = 0


# -- the space ---------------------------------------------------------------------------------


def ring_rows(n: int, k: int) -> tuple[tuple[int, ...], ...]:
    """Neighbours of ring position p in the Harary ring C_n(1..k/2) (model vertices = ring
    positions; the real graph maps position p to party ``graph.ring[p]``)."""
    h = k // 2
    return tuple(tuple(sorted({(p + d) % n for d in range(-h, h + 1) if d})) for p in range(n))


def complete_rows(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(v for v in range(n) if v != u) for u in range(n))


#: The Petersen graph (3-regular, 10 vertices, vertex-transitive): outer 5-cycle 0..4, spokes
#: i -- i+5, inner pentagram 5..9. The issue's whole-vector attack runs on it with t = 2.
PETERSEN_EDGES = (
    [(i, (i + 1) % 5) for i in range(5)]
    + [(i, i + 5) for i in range(5)]
    + [(5 + i, 5 + (i + 2) % 5) for i in range(5)]
)


def petersen_rows() -> tuple[tuple[int, ...], ...]:
    rows: list[set[int]] = [set() for _ in range(10)]
    for a, b in PETERSEN_EDGES:
        rows[a].add(b)
        rows[b].add(a)
    return tuple(tuple(sorted(r)) for r in rows)


@dataclass(frozen=True)
class Instance:
    """One point of the searched space (see the module docstring)."""

    graph: str  # "harary", "complete" or "petersen"
    n: int
    k: int
    t: int
    colluders: int  # at most this many (the config's tolerated colluders c)
    min_holders: int | None  # None: whole-vector aggregation
    lists: int
    rule: str
    #: part-wise: every party outside the attacked block's holders holds a second block (a
    #: layout the engines can run: a party holding nothing has no input). Off for the proofs:
    #: the one-block space is the larger one (see the module docstring).
    background: bool = False

    @property
    def neighbors(self) -> tuple[tuple[int, ...], ...]:
        if self.graph == "harary":
            return ring_rows(self.n, self.k)
        if self.graph == "complete":
            return complete_rows(self.n)
        if self.graph == "petersen":
            return petersen_rows()
        raise ValueError(f"unknown graph {self.graph!r}")

    @property
    def degree_cap(self) -> int | None:
        """h + 1 on a Harary ring with n >= 3h + 1 (D_b's cap is h + 1 + c), else None."""
        h = self.k // 2
        if self.graph == "harary" and self.n >= 3 * h + 1:
            return h + 1
        return None

    @property
    def label(self) -> str:
        mode = "whole" if self.min_holders is None else f"part-wise mh={self.min_holders}"
        return (
            f"{self.graph}(n={self.n},k={self.k}) t={self.t} c<={self.colluders} {mode}"
            f" lists<={self.lists} rule={self.rule}"
        )


@dataclass
class Strategy:
    """A concrete server strategy the solver found (model vertices; see ``Instance``)."""

    instance: Instance
    goal: str
    colluders: tuple[int, ...]
    holders: tuple[int, ...]  # of the attacked block (everyone in whole-vector mode)
    #: partners[b]: the neighbours whose shares b received (b masks with exactly these)
    partners: dict[int, tuple[int, ...]]
    masked: tuple[int, ...]  # honest parties that masked
    survivors: tuple[tuple[int, ...], ...]  # U3 of each list
    dropped: tuple[tuple[int, ...], ...]  # D' of each list
    signs: dict[int, int]  # honest party -> the list it signs
    reveals: dict[int, int]  # honest party -> the list it answers an unmask request for
    colluder_partners: dict[int, dict[int, tuple[int, ...]]]  # list -> colluder -> claimed set
    sets: tuple[tuple[int, ...], ...]  # the free sets whose sums the server learns
    victim: int = VICTIM
    known_self: tuple[int, ...] = ()  # parties whose b_u the server reconstructs
    known_key: tuple[int, ...] = ()  # parties whose s_u the server reconstructs

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["instance"] = asdict(self.instance)
        return out


# -- the encoding --------------------------------------------------------------------------------


def _z3() -> Any:
    try:
        import z3
    except ImportError as exc:  # pragma: no cover - the 'audit' extra
        raise ImportError(
            "the strategy search needs z3-solver (pip install 'secagg[audit]')"
        ) from exc
    return z3


class _Model:
    """The constraints of one instance (see the module docstring for their meaning)."""

    def __init__(self, inst: Instance, goals: Sequence[str]) -> None:
        z3 = _z3()
        self.z3, self.inst = z3, inst
        n, t, m = inst.n, inst.t, inst.lists
        N = inst.neighbors
        self.N = N
        B, And, Or, Not, Implies = z3.Bool, z3.And, z3.Or, z3.Not, z3.Implies
        AtLeast, AtMost = z3.AtLeast, z3.AtMost
        # QF_FD: z3's finite-domain (SAT + cardinality) engine, several times faster than the
        # default solver on these pure Boolean / pseudo-Boolean problems.
        s = z3.SolverFor("QF_FD")
        self.solver = s
        partwise = inst.min_holders is not None
        mh = inst.min_holders or 2

        col = [z3.BoolVal(False)] * n
        if inst.colluders > 0:  # never the victim
            col = [z3.BoolVal(False)] + [B(f"col{u}") for u in range(1, n)]
            s.add(AtMost(*col[1:], inst.colluders))
        A = [B(f"A{u}") for u in range(n)] if partwise else [z3.BoolVal(True)] * n
        if partwise:
            s.add(AtLeast(*A, mh))
            if inst.background:
                s.add(AtMost(*A, n - mh))
        R = {(a, b): B(f"R{a}_{b}") for b in range(n) for a in N[b]}
        mk = [B(f"mk{u}") for u in range(n)]
        for b in range(n):
            inbound = [R[a, b] for a in N[b]]
            s.add(Implies(col[b], And(*inbound, mk[b])))
            s.add(Implies(mk[b], AtLeast(*inbound, t)))
            s.add(Implies(Not(mk[b]), And(*[Not(r) for r in inbound])))
        U = [[B(f"U{j}_{u}") for u in range(n)] for j in range(m)]
        D = [[B(f"D{j}_{u}") for u in range(n)] for j in range(m)]
        old = inst.rule == "old"
        for j in range(m):
            s.add(AtLeast(*U[j], t))
            for u in range(n):
                s.add(Not(And(U[j][u], D[j][u])))

        sg = [[B(f"sg{u}_{j}") for j in range(m)] for u in range(n)]
        rv = [[B(f"rv{u}_{j}") for j in range(m)] for u in range(n)]
        Pc = {(j, o, x): B(f"Pc{j}_{o}_{x}") for j in range(m) for o in range(n) for x in N[o]}

        def partner(o: int, j: int, x: int) -> Any:
            """x is in o's (signed) partner set shown with list j."""
            if inst.colluders == 0 or o == VICTIM:
                return R[x, o]
            return Or(And(col[o], Pc[j, o, x]), And(Not(col[o]), R[x, o]))

        cert = [[AtLeast(*[sg[w][j] for w in N[x]], t) for x in range(n)] for j in range(m)]
        aU = [[And(A[u], U[j][u]) for u in range(n)] for j in range(m)]
        bU = [[And(Not(A[u]), U[j][u]) for u in range(n)] for j in range(m)]
        cap = inst.degree_cap

        def protected(o: int, j: int) -> Any:
            """(C2) for owner o under list j (old rule: its weaker form)."""
            conds = [AtLeast(*[And(partner(o, j, x), U[j][x]) for x in N[o]], t)]
            if partwise:
                conds.append(Implies(A[o], block_ok(o, j, A, aU[j])))
                if inst.background:
                    conds.append(Implies(Not(A[o]), block_ok(o, j, [Not(a) for a in A], bU[j])))
            return And(*conds)

        def block_ok(o: int, j: int, holds: list[Any], alive: list[Any]) -> Any:
            """Per block of owner o: |A_b| >= min_holders and deg_b(o) >= min_holders - 1; the
            new rule adds deg_b(o) >= min(floor((|H_b| + c) / 2), h + 1 + c), H_b being ALL
            holders of the block (secagg.engine.unmask.connectivity_degree)."""
            deg = [And(partner(o, j, x), holds[x], U[j][x]) for x in N[o]]
            block = [AtLeast(*alive, mh), AtLeast(*deg, mh - 1)]
            if not old:
                c = inst.colluders
                half = z3.PbGe([(d, 2) for d in deg] + [(x, -1) for x in holds], c - 1)
                if cap is not None:
                    half = Or(half, AtLeast(*deg, cap + c))
                block.append(half)
            return And(*block)

        def certified_partners(o: int, j: int) -> Any:
            return And(*[Implies(partner(o, j, x), cert[j][x]) for x in N[o]])

        prot = [[protected(o, j) for j in range(m)] for o in range(n)]
        certp = [[certified_partners(o, j) for j in range(m)] for o in range(n)] if not old else []
        for u in range(n):
            for j in range(m):
                s.add(Implies(sg[u][j], U[j][u]))
                s.add(Implies(col[u], sg[u][j] == U[j][u]))
                s.add(Implies(rv[u][j], And(Not(col[u]), sg[u][j])))
            s.add(Implies(Not(col[u]), AtMost(*sg[u], 1)))
            for j in range(m):
                sign_ok = [mk[u], U[j][u]]
                sign_ok += [Implies(R[a, u], Or(U[j][a], D[j][a])) for a in N[u]]
                sign_ok.append(AtLeast(*[And(R[a, u], U[j][a]) for a in N[u]], t))
                s.add(Implies(And(Not(col[u]), sg[u][j]), And(*sign_ok)))
                # The revealer's checks for an unmask request carrying list j.
                checks = [U[j][u], prot[u][j]]
                for a in N[u]:
                    checks.append(R[a, u] == Or(U[j][a], D[j][a]))
                if old:
                    checks.append(AtLeast(*[sg[w][j] for w in range(n)], t))
                else:
                    checks += [Implies(R[x, u], cert[j][x]) for x in N[u]]
                for o in N[u]:
                    owner = And(R[o, u], U[j][o])
                    checks.append(Implies(owner, prot[o][j]))
                    if not old:
                        checks.append(Implies(owner, certp[o][j]))
                s.add(Implies(rv[u][j], And(*checks)))

        # What the server reconstructs.
        KB, KS = [], []
        for o in range(n):
            bsh, ssh = [], []
            for r in N[o]:
                bsh.append(Or(col[r], *[And(rv[r][j], R[o, r], U[j][o]) for j in range(m)]))
                ssh.append(Or(col[r], *[And(rv[r][j], R[o, r], D[j][o]) for j in range(m)]))
            KB.append(Or(col[o], AtLeast(*bsh, t)))
            KS.append(Or(col[o], AtLeast(*ssh, t)))

        def free_set(name: str) -> list[Any]:
            S = [B(f"{name}{u}") for u in range(n)]
            for u in range(n):
                s.add(Implies(S[u], And(Not(col[u]), A[u], mk[u], KB[u])))
                for w in N[u]:
                    unknown = Not(Or(KS[u], KS[w]))
                    s.add(Implies(And(S[u], A[w], R[w, u], unknown), And(R[u, w], S[w])))
            return S

        S1 = free_set("S")
        s.add(S1[VICTIM])
        options = []
        if "isolate" in goals:
            options.append(AtMost(*S1, 1))
        if "thin" in goals and partwise:
            options.append(z3.PbLe([(x, 1) for x in S1] + [(c, 1) for c in col[1:]], mh - 1))
        if ANY in goals:
            options.append(z3.BoolVal(True))
        if "split" in goals:
            S2 = free_set("T")
            options.append(And(AtLeast(*S2, 1), *[Not(And(S1[u], S2[u])) for u in range(n)]))
            self.S2 = S2
        s.add(Or(*options) if options else z3.BoolVal(False))
        self.col, self.A, self.R, self.mk, self.U, self.D = col, A, R, mk, U, D
        self.sg, self.rv, self.Pc, self.KB, self.KS, self.S1 = sg, rv, Pc, KB, KS, S1
        self.goals = tuple(goals)

    def strategy(self) -> Strategy:
        z3, inst, N = self.z3, self.inst, self.N
        mdl = self.solver.model()
        n, m = inst.n, inst.lists

        def val(x: Any) -> bool:
            return bool(z3.is_true(mdl.eval(x, model_completion=True)))

        col = tuple(u for u in range(n) if val(self.col[u]))
        holders = tuple(u for u in range(n) if val(self.A[u]))
        partners = {b: tuple(a for a in N[b] if val(self.R[a, b])) for b in range(n)}
        masked = tuple(u for u in range(n) if val(self.mk[u]) and u not in col)
        survivors = tuple(tuple(u for u in range(n) if val(self.U[j][u])) for j in range(m))
        dropped = tuple(tuple(u for u in range(n) if val(self.D[j][u])) for j in range(m))
        signs = {u: j for u in range(n) if u not in col for j in range(m) if val(self.sg[u][j])}
        reveals = {u: j for u in range(n) if u not in col for j in range(m) if val(self.rv[u][j])}
        claimed = {
            j: {o: tuple(x for x in N[o] if val(self.Pc[j, o, x])) for o in col} for j in range(m)
        }
        sets = [tuple(u for u in range(n) if val(self.S1[u]))]
        goal = "isolate" if len(sets[0]) == 1 and "isolate" in self.goals else ""
        if hasattr(self, "S2"):
            second = tuple(u for u in range(n) if val(self.S2[u]))
            if second and not set(second) & set(sets[0]) and not goal:
                sets.append(second)
                goal = "split"
        if not goal:
            goal = ANY if self.goals == (ANY,) else "isolate" if len(sets[0]) == 1 else "thin"
        return Strategy(
            instance=inst,
            goal=goal,
            colluders=col,
            holders=holders,
            partners=partners,
            masked=masked,
            survivors=survivors,
            dropped=dropped,
            signs=signs,
            reveals=reveals,
            colluder_partners=claimed,
            sets=tuple(sets),
            known_self=tuple(u for u in range(n) if val(self.KB[u])),
            known_key=tuple(u for u in range(n) if val(self.KS[u])),
        )


@dataclass
class Outcome:
    """The solver's answer for one instance."""

    instance: Instance
    goals: tuple[str, ...]
    found: Strategy | None
    seconds: float
    status: str  # "sat", "unsat", "unknown" (time limit) or "not run" (budget spent)


def solve(inst: Instance, goals: Sequence[str] = GOALS, timeout_ms: int = 0) -> Outcome:
    """Search one instance for a strategy reaching any of ``goals``."""
    if inst.rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {inst.rule!r}")
    start = time.perf_counter()
    model = _Model(inst, goals)
    if timeout_ms:
        model.solver.set("timeout", timeout_ms)
    status = str(model.solver.check())
    found = model.strategy() if status == "sat" else None
    return Outcome(inst, tuple(goals), found, time.perf_counter() - start, status)


# -- the spaces the audit searches ---------------------------------------------------------------


def thresholds(k: int, c: int) -> range:
    """Every t the active-mode guard 2t > k + c allows (t <= k)."""
    return range((k + c) // 2 + 1, k + 1)


def instances_for(
    graph: str, n: int, k: int, rule: str, lists: int, mh_values: Iterable[int] = (2, 3, 4)
) -> list[Instance]:
    """Every (t, c, mode) of one graph: c as large as the guard and min_holders >= c + 2 allow
    (more colluders only add power: 'at most c' covers the smaller counts)."""
    out = []
    for t in thresholds(k, 0):
        c_guard = min(2, 2 * t - k - 1)
        if graph == "harary":  # RoundConfig: t >= h + 1 + c on a Harary ring
            c_guard = min(c_guard, t - k // 2 - 1)
        if c_guard < 0:
            continue
        out.append(Instance(graph, n, k, t, c_guard, None, lists, rule))
        for mh in mh_values:
            c = min(c_guard, mh - 2)
            out.append(Instance(graph, n, k, t, c, mh, lists, rule))
    return out


@dataclass(frozen=True)
class Task:
    """One solver call: an instance, the goals asked for, and a time limit."""

    instance: Instance
    goals: tuple[str, ...]
    timeout_s: float


def _ring_sizes(k: int) -> list[int]:
    """Ring sizes searched for degree k: n = 3h+1 (the smallest RoundConfig accepts in active
    mode), 4h+1 (two disjoint closed windows fit on the ring) and 30 (the largest asked for)."""
    h = k // 2
    return sorted({n for n in (3 * h + 1, 4 * h + 1, 30) if k + 2 <= n <= 30})


def quick_tasks(rule: str) -> list[Task]:
    """Seconds: small rings and a complete graph (new rule), or the issue's attacks (old)."""
    if rule == "old":
        return [
            Task(ISSUE_INSTANCES[0], ("isolate",), 30),
            Task(ISSUE_INSTANCES[1], ("isolate",), 30),
            Task(ISSUE_INSTANCES[2], ("isolate",), 60),
            Task(ISSUE_INSTANCES[4], ("split",), 30),
        ]
    out = []
    for n, k in ((7, 2), (8, 4)):
        for inst in instances_for("harary", n, k, rule, 2, mh_values=(2, 3)):
            out.append(Task(inst, GOALS, 20))
    for inst in instances_for("complete", 5, 4, rule, 2, mh_values=(2, 3)):
        out.append(Task(inst, GOALS, 20))
    return out


def full_tasks(rule: str) -> list[Task]:
    """The full space: k in {2, 4, 6, 8, 10} on the ring sizes of :func:`_ring_sizes`, complete
    graphs n in {5, 7, 9}; every allowed t, c <= 2, whole-vector and min_holders in {2, 3};
    two lists (three for n <= 10). 'isolate' and 'thin' first for every instance (up to 120 s
    each), then 'split' (the hard query, up to 45 s each)."""
    if rule == "old":
        return [
            Task(inst, (goal,), 120)
            for inst in ISSUE_INSTANCES
            for goal in GOALS
            if goal != "thin" or inst.min_holders is not None
        ]
    graphs = [("harary", n, k) for k in (2, 4, 6, 8, 10) for n in _ring_sizes(k)]
    graphs += [("complete", n, n - 1) for n in (5, 7, 9)]
    insts = [
        inst
        for kind, n, k in graphs
        for inst in instances_for(kind, n, k, rule, 3 if n <= 10 else 2, mh_values=(2, 3))
    ]
    return [Task(i, ("isolate", "thin"), 120) for i in insts] + [
        Task(i, ("split",), 45) for i in insts
    ]


#: Under the old rule the search must find the issue's attacks (and the per-component leak).
ISSUE_INSTANCES = (
    Instance("petersen", 10, 3, 2, 0, None, 2, "old"),
    Instance("harary", 10, 4, 3, 0, None, 2, "old"),
    Instance("harary", 20, 6, 4, 0, 2, 2, "old"),
    Instance("harary", 24, 8, 5, 0, 3, 2, "old"),
    Instance("harary", 12, 4, 3, 0, 2, 1, "old"),
    Instance("harary", 12, 4, 3, 1, 3, 2, "old"),
)


def run_tasks(tasks: Sequence[Task], budget_s: float | None = None) -> list[Outcome]:
    """Solve the tasks in order; once ``budget_s`` seconds are spent, the rest are reported
    with status "not run"."""
    out: list[Outcome] = []
    start = time.perf_counter()
    for task in tasks:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            out.append(Outcome(task.instance, task.goals, None, 0.0, "not run"))
            continue
        out.append(solve(task.instance, task.goals, int(task.timeout_s * 1000)))
    return out
