"""Rule-aware reward shaping (TaoSR-AGRL, PAPERS.md §5 and §6.8): the final judgement split into dense rewards,
one per relevance rule, each a function of the parsed rationale (she_lib.schema) and the example's record
(she_lib.facts through the offline verifier, she_lib.verifier).

Components of one (example, completion) pair, each in [0, 1] (unweighted):

    format    F = 1[well formed]: a readable <grade> plus the five steps, each once, in order, nothing else
              (``ParsedRationale.well_formed``)
    label     L = 1[<grade> = gold]                                          (uses the human label)
    distance  D = 1 - |rank(<grade>) - rank(gold)| / (K - 1), 0 with no readable grade (uses the human label);
              rank = ``GradeScale.grades`` (ESCI: Exact 4 > Substitute 3 > Complement 2 > Irrelevant 1, the
              Taobao order of DESIGN.md), K = the scale's number of grades
    type      the <type> verdict is allowed by the rationale's own <grade>
    attr      the <attr> verdict is allowed by the rationale's own <grade> and follows from the example's facts: it is
              the verifier's ``expected_attr_verdict`` for that grade (the facts verdict where the grade allows it)
    judge     the grade the <judge> step states is the <grade>
    claims    every checkable claim about the example holds: the words of <query> are in the query (and its
              ``excludes:`` are negated there), the words of <product> are in the title/brand/colour/category,
              the ``matches:`` words of <type> are in the record (its ``lacks:`` words are not), the query terms
              <attr> lists as ``met:`` / ``unstated:`` / ``fails:`` are so in the facts (the verifier's record
              checks, run with no label)

The four rules (RULES) never read the human label: ``type`` and ``attr`` look the (<grade>, verdict) pair up
in the verifier's own tables (``VerifierConfig.type_truth`` / ``attr_truth``, the ESCI definitions of
DESIGN.md), with the rationale's <grade> where the verifier puts the human label. A pair the table calls
incorrect breaks the rule; correct or undecided is consistent. So, for ESCI:

    <grade>      <type> verdicts that break the rule              <attr> verdicts that break the rule
    Exact        substitutable / complementary / unrelated type   some specs fail, not decisive
    Substitute   complementary / unrelated type                   not decisive
    Complement   same / substitutable / unrelated type            (none)
    Irrelevant   complementary type                               (none)

and an attr verdict of the facts' vocabulary (all specs met / some specs unstated / some specs fail) other than
the one the facts give for that grade breaks it too (e.g. "all specs met" when the listing does not name a spec).

Each rule is ``consistent`` (reward 1), ``broken`` (reward 0) or ``unverifiable`` (reward
``unverifiable_reward``, default 0: no credit for a rule that cannot be checked):

    type / attr   unverifiable if there is no readable <grade>, no such step, its verdict is outside the closed
                  vocabulary (schema.TYPE_VERDICTS / ATTR_VERDICTS), or the grade is not in the table
    judge         unverifiable if there is no readable <grade>, no <judge>, or the judgement states no grade;
                  broken if it states another grade
    claims        broken if any present step of ``claim_steps`` makes a false claim; else consistent if a
                  present <query> or <product> step states checkable words (all true); else unverifiable (no
                  claim step, or nothing checkable: "unknown item", "wants: unclear"). The <type> / <attr>
                  evidence can only break this rule: their verdicts are the type and attr rules' business.

A repeated step is judged on its first occurrence (what the parser keeps).

Total (RuleRewardConfig's weights; gate G = 1[well formed and <grade> = gold]):

    R = w_format F + w_label L + w_distance D + sum_k w_k r_k,     k in (type, attr, judge, claims)

    hard gate (``hard_gate=True``), when G = 0:
        gate_scope "rules" (default): the rule terms are zeroed:  R = w_format F + w_label L + w_distance D
        gate_scope "all" (PAPERS §6.8 strict form):                R = w_format F
    so reasoning behind a wrong grade, or in a broken format, earns nothing. With G = 1 (a well-formed
    rationale with the gold grade) every rule is judged against a grade that is the gold one.

Defaults (PAPERS §6.8, [I]): w_label 1.0, w_format 0.1, w_k 0.2 each, w_distance 0.2: a right, well-formed,
fully consistent rationale earns 0.1 + 1 + 0.2 + 4 x 0.2 = 2.1. Under the default gate, with the rule and
distance weights at 0, R is exactly she_lib.rewards.OutcomeReward (1[grade = gold] + 0.1 1[well formed]).

Bad output never raises. ``parsable`` = a <grade> could be read (schema's ``parsed``; evaluate's parse
failures are the others): an unparsable completion (None, not text, empty, untagged, no readable grade) has
F = L = D = 0, its type / attr / judge rules unverifiable, and under the gate R = 0. It is counted
(``parsable`` component, :class:`RuleReward`'s ``unparsable`` counter).

Entry points: :func:`rule_rewards` (one pair -> components + total), :class:`RuleReward` (a TRL reward
function that keeps the components of its last call and logs their means), :func:`rule_violation_rate` (the
share of parsable rationales breaking at least one rule, and per rule). Pure Python, ~0.5 ms a rationale.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .labels import GradeScale, get_scale
from .rewards import truncated
from .schema import ParsedRationale, completion_text, parse
from .verifier import CORRECT, FACT_VERDICTS, INCORRECT, VerifierConfig, expected_attr_verdict, facts_of, verify

RULES = ("type", "attr", "judge", "claims")  # the consistency rules; none reads the human label
COMPONENTS = ("format", "label", "distance", *RULES)  # unweighted, each in [0, 1]
CONSISTENT, BROKEN, UNVERIFIABLE = "consistent", "broken", "unverifiable"
GATE_SCOPES = ("rules", "all")
CLAIM_STEPS = ("query", "product", "type", "attr")
# columns TRL passes to a reward function that are not the example's record
_TRL_KWARGS = frozenset({"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                         "environments"})


@dataclass(frozen=True)
class RuleRewardConfig:
    """Weights and switches of the rule-aware reward (module docstring has the exact formula):

        R = w_format 1[well formed] + w_label 1[grade = gold] + w_distance (1 - |rank(grade) - rank(gold)| / (K - 1))
            + w_type r_type + w_attr r_attr + w_judge r_judge + w_claims r_claims

    with r_k = 1 consistent, 0 broken, ``unverifiable_reward`` unverifiable. With ``hard_gate`` and a broken
    format or a wrong grade, ``gate_scope`` "rules" zeroes the four rule terms (the rest stays);
    "all" zeroes everything but the format term (R = w_format 1[well formed], PAPERS §6.8)."""
    w_format: float = 0.1
    w_label: float = 1.0
    w_distance: float = 0.2
    w_type: float = 0.2
    w_attr: float = 0.2
    w_judge: float = 0.2
    w_claims: float = 0.2
    hard_gate: bool = True
    gate_scope: str = "rules"  # one of GATE_SCOPES
    unverifiable_reward: float = 0.0  # a rule whose step is missing / verdict outside the vocabulary
    claim_steps: tuple[str, ...] = CLAIM_STEPS  # the steps whose claims the "claims" rule checks
    verifier: VerifierConfig = field(default_factory=VerifierConfig)  # tables, record fields, filler words

    def __post_init__(self):
        if self.gate_scope not in GATE_SCOPES:
            raise ValueError(f"unknown gate_scope {self.gate_scope!r}; choose one of {GATE_SCOPES}")
        bad = [s for s in self.claim_steps if s not in CLAIM_STEPS]
        if bad:
            raise ValueError(f"claim_steps {bad} are not among {CLAIM_STEPS}")

    def weight(self, rule: str) -> float:
        return getattr(self, f"w_{rule}")

    def max_total(self) -> float:
        """The total of a well-formed, right, fully consistent rationale."""
        return self.w_format + self.w_label + self.w_distance + sum(self.weight(k) for k in RULES)


@dataclass(frozen=True)
class RuleCheck:
    status: str  # CONSISTENT / BROKEN / UNVERIFIABLE
    reason: str


@dataclass
class RuleChecks:
    """Everything the reward reads for one pair: the parse, the four rule checks, the gold grade."""
    parsed: ParsedRationale
    rules: dict[str, RuleCheck]  # every name in RULES
    gold: str
    parsable: bool

    def broken(self) -> list[str]:
        return [k for k in RULES if self.rules[k].status == BROKEN]


# ------------------------------------------------------------------------------------------ inputs
def _gold(example, scale: GradeScale) -> str:
    """The example's human grade as a scale word (raw labels like "E" are mapped); a bad label is a data error."""
    label = example["label"]
    return label if label in scale.words else scale.word(label)


# ------------------------------------------------------------------------------------------ rules
def _table_rule(parsed: ParsedRationale, step: str, table: dict) -> RuleCheck:
    """type / attr: the step's verdict against the rationale's own <grade>, by the verifier's table."""
    if parsed.grade is None:
        return RuleCheck(UNVERIFIABLE, "no readable <grade>")
    if step not in parsed.steps:
        return RuleCheck(UNVERIFIABLE, f"no <{step}> step")
    verdict = parsed.steps[step].verdict
    if verdict is None:
        return RuleCheck(UNVERIFIABLE, f"<{step}> verdict outside the closed vocabulary")
    if parsed.grade not in table:
        return RuleCheck(UNVERIFIABLE, f"the {step} table has no row for {parsed.grade}")
    if table[parsed.grade].get(verdict) == INCORRECT:
        return RuleCheck(BROKEN, f"'{verdict}' contradicts the grade {parsed.grade}")
    return RuleCheck(CONSISTENT, f"'{verdict}' is allowed by the grade {parsed.grade}")


def type_rule(parsed: ParsedRationale, config: RuleRewardConfig) -> RuleCheck:
    """The product-type verdict is allowed by the stated grade (e.g. "unrelated type" with Exact breaks it)."""
    return _table_rule(parsed, "type", config.verifier.type_truth)


def attr_rule(parsed: ParsedRationale, config: RuleRewardConfig, example=None) -> RuleCheck:
    """The attribute verdict is allowed by the stated grade (e.g. "some specs fail" with Exact breaks it) and, given
    the example, is the one its facts give for that grade (e.g. "all specs met" with an unstated spec breaks it)."""
    check = _table_rule(parsed, "attr", config.verifier.attr_truth)
    verdict = parsed.steps["attr"].verdict if "attr" in parsed.steps else None
    if check.status != CONSISTENT or example is None or verdict not in FACT_VERDICTS:
        return check
    want = expected_attr_verdict(facts_of(example), parsed.grade, config.verifier.attr_truth)
    if want is not None and verdict != want:
        return RuleCheck(BROKEN, f"'{verdict}' contradicts the facts, which give '{want}' for {parsed.grade}")
    return check


def judge_rule(parsed: ParsedRationale) -> RuleCheck:
    """The judgement restates the <grade>."""
    if parsed.grade is None:
        return RuleCheck(UNVERIFIABLE, "no readable <grade>")
    if "judge" not in parsed.steps:
        return RuleCheck(UNVERIFIABLE, "no <judge> step")
    if parsed.judge_grade is None:
        return RuleCheck(UNVERIFIABLE, "the judgement states no grade")
    if parsed.judge_grade != parsed.grade:
        return RuleCheck(BROKEN, f"the judgement states {parsed.judge_grade}, <grade> is {parsed.grade}")
    return RuleCheck(CONSISTENT, f"the judgement states {parsed.grade}, as <grade> does")


def claims_rule(example, parsed: ParsedRationale, scale: GradeScale, config: RuleRewardConfig) -> RuleCheck:
    """Claims about the example hold: the verifier's record checks of ``claim_steps``, with empty verdict tables
    and no label (so only a false claim can make a step incorrect, and the human label is never read)."""
    present = [s for s in config.claim_steps if s in parsed.steps]
    if not present:
        return RuleCheck(UNVERIFIABLE, "no step that makes claims")
    vcfg = dataclasses.replace(config.verifier, type_truth={}, attr_truth={})
    truths = verify({**example, "label": None}, parsed, scale, vcfg).steps
    false = [f"{s}: {truths[s].reason}" for s in present if truths[s].truth == INCORRECT]
    if false:
        return RuleCheck(BROKEN, "; ".join(false))
    if any(truths[s].truth == CORRECT for s in present):
        return RuleCheck(CONSISTENT, "every checkable claim holds")
    return RuleCheck(UNVERIFIABLE, "states nothing checkable")


def rule_checks(example, completion, scale: GradeScale | str = "esci",
                config: RuleRewardConfig | None = None) -> RuleChecks:
    """Parse ``completion`` (text, TRL conversational list, a ParsedRationale, or anything: never raises) and
    check every rule of RULES for ``example`` (a mapping with the record and ``label``; facts are computed
    when the facts columns are absent)."""
    config = config or RuleRewardConfig()
    scale = get_scale(scale)
    parsed = completion if isinstance(completion, ParsedRationale) else parse(completion_text(completion), scale)
    rules = {"type": type_rule(parsed, config), "attr": attr_rule(parsed, config, example), "judge": judge_rule(parsed),
             "claims": claims_rule(example, parsed, scale, config)}
    return RuleChecks(parsed, rules, _gold(example, scale), parsed.parsed)


# ------------------------------------------------------------------------------------------ reward
def _rule_value(check: RuleCheck, config: RuleRewardConfig) -> float:
    return {CONSISTENT: 1.0, BROKEN: 0.0}.get(check.status, config.unverifiable_reward)


def rewards_from_checks(checks: RuleChecks, scale: GradeScale, config: RuleRewardConfig) -> dict[str, float]:
    """Components (unweighted, before the gate), ``gate`` (1 = open), ``parsable``, ``violation`` (1 = some rule
    broken) and ``total`` (weighted, gated)."""
    p, gold = checks.parsed, checks.gold
    fmt, lab = float(p.well_formed), float(p.grade is not None and p.grade == gold)
    ranks, k = scale.grades, len(scale.words)
    dist = 1.0 - abs(ranks[p.grade] - ranks[gold]) / (k - 1) if p.grade is not None and k > 1 else lab
    comps = {"format": fmt, "label": lab, "distance": float(dist),
             **{r: _rule_value(checks.rules[r], config) for r in RULES}}
    gate = fmt * lab
    base = config.w_format * fmt + config.w_label * lab + config.w_distance * dist
    rules = sum(config.weight(r) * comps[r] for r in RULES)
    if not config.hard_gate or gate:
        total = base + rules
    elif config.gate_scope == "rules":
        total = base
    else:
        total = config.w_format * fmt
    return {**comps, "gate": gate, "parsable": float(checks.parsable), "violation": float(bool(checks.broken())),
            "total": float(total)}


def rule_rewards(example, completion, scale: GradeScale | str = "esci",
                 config: RuleRewardConfig | None = None) -> dict[str, float]:
    """The rule-aware reward of one (example, completion) pair: every component of COMPONENTS (unweighted, in
    [0, 1], before the gate), ``gate``, ``parsable``, ``violation`` and ``total`` (module docstring). Never raises
    on the completion; an example without a valid ``label`` raises (a data error)."""
    config = config or RuleRewardConfig()
    scale = get_scale(scale)
    return rewards_from_checks(rule_checks(example, completion, scale, config), scale, config)


class RuleReward:
    """TRL reward function: ``RuleReward(config, scale)(prompts, completions, label=[...], query=[...], ...)``.

    Every dataset column arrives as a keyword list (one value per completion); the example of completion i is
    ``{column: values[i]}`` (record columns, ``label``, and the facts columns if the dataset has them).
    Returns the totals. Keeps the components of its last call in ``last_components`` (one dict per
    completion, :func:`rule_rewards`), their means in :meth:`component_means`, and counts ``completions`` and
    ``unparsable`` over all calls. When TRL passes ``log_metric`` (TRL >= 1.x), logs each component's mean as
    ``rules/<name>`` (``log_prefix``)."""

    def __init__(self, config: RuleRewardConfig | None = None, scale: GradeScale | str = "esci",
                 name: str = "rules", log_prefix: str = "rules/", eos_token_ids=()):
        self.config = config or RuleRewardConfig()
        self.eos_token_ids = tuple(eos_token_ids or ())  # a completion cut at the token limit earns 0 (rewards.truncated)
        self.scale = get_scale(scale)
        self.__name__ = name
        self.log_prefix = log_prefix
        self.last_components: list[dict[str, float]] = []
        self.last_checks: list[RuleChecks] = []
        self.completions = 0
        self.unparsable = 0

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        completions = list(completions or [])
        n = len(completions)
        cols = {k: v for k, v in kwargs.items()
                if k not in _TRL_KWARGS and isinstance(v, (list, tuple)) and len(v) == n}
        if "label" not in cols:
            raise ValueError("RuleReward needs the dataset's 'label' column (the human grade)")
        self.last_checks, self.last_components = [], []
        for i, completion in enumerate(completions):
            example = {k: v[i] for k, v in cols.items()}
            checks = rule_checks(example, completion, self.scale, self.config)
            self.last_checks.append(checks)
            self.last_components.append(rewards_from_checks(checks, self.scale, self.config))
        self.completions += n
        self.unparsable += sum(c["parsable"] == 0.0 for c in self.last_components)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            for name, value in self.component_means().items():
                if name != "total":  # TRL logs the total itself as rewards/<name>/mean
                    log_metric(f"{self.log_prefix}{name}", value)
        cut = truncated(kwargs.get("completion_ids"), self.eos_token_ids, n)
        return [0.0 if over else c["total"] for c, over in zip(self.last_components, cut)]

    def component_means(self) -> dict[str, float]:
        """Mean of every component of the last call (empty dict before the first call)."""
        if not self.last_components:
            return {}
        return {k: float(np.mean([c[k] for c in self.last_components])) for k in self.last_components[0]}


# ------------------------------------------------------------------------------------------ metric
def rule_violation_rate(examples, completions, scale: GradeScale | str = "esci",
                        config: RuleRewardConfig | None = None) -> dict[str, Any]:
    """Rule adherence of ``completions`` (one per example; ``examples`` a list of mappings or a DataFrame):

    * ``rule_violation_rate``: share of parsable rationales (readable <grade>) breaking at least one rule of RULES
    * ``violation_rate/<rule>``: share of parsable rationales breaking that rule
    * ``unverifiable_rate/<rule>``: share of parsable rationales where that rule could not be checked
    * ``n``, ``parsable``, ``unparsable_rate`` (over all n)

    Rates over no parsable rationale are None. Weights and the gate play no part (they shape the reward only)."""
    config = config or RuleRewardConfig()
    scale = get_scale(scale)
    rows = examples.to_dict("records") if hasattr(examples, "to_dict") else list(examples)
    completions = list(completions)
    if len(rows) != len(completions):
        raise ValueError(f"{len(rows)} examples but {len(completions)} completions")
    checks = [c for c in (rule_checks(r, t, scale, config) for r, t in zip(rows, completions)) if c.parsable]
    n, m = len(rows), len(checks)

    def rate(pred):
        return float(np.mean([pred(c) for c in checks])) if m else None

    out: dict[str, Any] = {"n": n, "parsable": m, "unparsable_rate": (n - m) / n if n else None,
                           "rule_violation_rate": rate(lambda c: bool(c.broken()))}
    out.update({f"violation_rate/{k}": rate(lambda c, k=k: c.rules[k].status == BROKEN) for k in RULES})
    out.update({f"unverifiable_rate/{k}": rate(lambda c, k=k: c.rules[k].status == UNVERIFIABLE) for k in RULES})
    return out
