"""Stepwise-reward inspector: an RL run's rollout groups, one rollout at a time, every step coloured by its reward.

Input: the rollout log ``runs/<profile>/<run>/rollouts.jsonl`` that the SRPO trainer writes, one JSON object per
rollout (keys and meaning: she_lib.rollout_log).

Colours: a step reward r in [0, 1] is matplotlib's RdYlGn(r) (red: wrong, green: right; grey: no reading); a
token advantage a is RdBu((1 + a / s) / 2) with s = max |a| over the group (red: pushed down, blue: pushed up).

Layers: :func:`render_rollout` / :func:`render_group` / :func:`page` build HTML strings (pure functions);
:class:`InspectorState` holds the selection (run, query, group, rollout, reward reader) with callbacks;
:class:`Inspector` puts ipywidgets on top of a state (JupyterLab), and its display carries the group as static
HTML for front ends without widgets; :meth:`InspectorState.export_html` writes a self-contained page (no scripts),
e.g. for a screenshot: ``chromium --headless --screenshot=inspector.png --window-size=1300,1500 inspector.html``.
:func:`demo_group` builds a group in the same schema from teacher and corrupted rationales of one example, examined
by the hybrid examiner and credited with SRPO's advantages, for notebooks with no RL run yet.
"""
from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path

import numpy as np

from .corruptions import KINDS, corrupt
from .examiner import Examiner, HybridConfig
from .labels import ESCI, get_scale
from .rationales import teacher_rationale
from .rewards import OutcomeReward
from .rollout_log import ROLLOUT_KEYS, rollout_record, token_steps
from .schema import parse
from .step_spans import completion_step_spans
READERS = ("combined", "verifier", "genrm")
NO_READING = "#d9d9d9"


# ------------------------------------------------------------------------------------------ loading
def load_rollouts(path: str | Path) -> list[dict]:
    """Records of a rollout log; a line that is not JSON or lacks a key raises ValueError naming the line, except
    a truncated last line (the trainer may be writing it), which is skipped."""
    lines = Path(path).read_text().splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in ROLLOUT_KEYS if k not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: rollout record lacks {missing}")
        out.append(rec)
    return out


def rollout_logs(runs_dir: str | Path) -> dict[str, Path]:
    """run name -> its rollouts.jsonl, for every run folder of ``runs_dir`` that has a non-empty one."""
    return {p.parent.name: p for p in sorted(Path(runs_dir).glob("*/rollouts.jsonl")) if p.stat().st_size}


# ------------------------------------------------------------------------------------------ colours
def reward_colour(r) -> str:
    """Hex colour of a step reward in [0, 1] (RdYlGn); NO_READING for None / NaN."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if r is None or (isinstance(r, float) and math.isnan(r)):
        return NO_READING
    return to_hex(colormaps["RdYlGn"](float(np.clip(r, 0, 1))))


def advantage_colour(a: float, scale: float) -> str:
    """Hex colour of a token advantage: RdBu((1 + a / scale) / 2), white at 0."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    x = 0.5 if not scale else 0.5 * (1 + float(np.clip(a / scale, -1, 1)))
    return to_hex(colormaps["RdBu"](x))


def advantage_scale(records) -> float:
    """max |token advantage| over ``records`` (1.0 when there is none)."""
    values = [abs(a) for r in records for a in r["token_advantages"]]
    return max(values) if values and max(values) > 0 else 1.0


# ---------------------------------------------------------------------------------------------- HTML
def _fmt(x, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "&mdash;"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _reward(rec, reader: str, k: int):
    values = rec["step_rewards"].get(reader)
    return None if values is None else values[k]


def _ink(colour: str) -> str:
    """Black or white text, whichever reads on ``colour`` (relative luminance 0.2126 R + 0.7152 G + 0.0722 B)."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#fff"


def _cell(value, colour: str, bold: bool = False) -> str:
    weight = "font-weight:bold;" if bold else ""
    return (f'<td style="background:{colour};color:{_ink(colour)};text-align:center;padding:2px 6px;{weight}">'
            f'{value}</td>')


def render_rollout(rec: dict, reader: str = "combined", scale: float | None = None) -> str:
    """One rollout: a header (grade vs human label, outcome), a table of the five steps (text edged in the colour of
    the ``reader``'s reward, every reader's reward, source, step advantage, critical mark) and the completion's
    tokens shaded by advantage and underlined in their step's reward colour."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; choose one of {READERS}")
    scale = scale or advantage_scale([rec])
    parsed = parse(rec["completion"], ESCI)  # for the step texts only (the grade is the record's)
    ok = rec["correct"]
    head = (f'<div style="margin:4px 0"><b>rollout {rec["rollout"]}</b> &middot; grade <b>{html.escape(rec["grade"] or "(none)")}'
            f'</b> vs human label <b>{html.escape(str(rec["label"]))}</b> '
            f'<span style="color:{"#1a7f37" if ok else "#cf222e"};font-weight:bold">{"&#10003; right" if ok else "&#10007; wrong"}'
            f'</span> &middot; outcome reward {_fmt(rec["outcome_reward"])} &middot; outcome advantage '
            f'{_fmt(rec["outcome_advantage"], True)}' + (f' &middot; <i>{html.escape(rec["origin"])}</i>' if rec.get("origin") else "")
            + "</div>")
    th = "".join(f'<th style="padding:2px 6px;{"text-decoration:underline;" if r == reader else ""}">{n}</th>'
                 for r, n in (("", "step"), ("", "text"), ("verifier", "verifier"), ("genrm", "GenRM"),
                              ("combined", "combined"), ("", "source"), ("", "step adv."), ("", "critical")))
    body = []
    for k, s in enumerate(rec["steps"]):
        text = parsed.steps[s].text if s in parsed.steps else "(missing)"
        colour = reward_colour(_reward(rec, reader, k))
        rewards = "".join(_cell(_fmt(_reward(rec, r, k)), reward_colour(_reward(rec, r, k)), r == reader) for r in
                          ("verifier", "genrm", "combined"))
        crit = rec["critical"][k]
        mark = {"first_error": "&#9873; first error", "discriminative": "&#9670; discriminative"}.get(crit, "")
        body.append(f'<tr><td style="padding:2px 6px"><b>{s}</b></td><td style="border-left:6px solid {colour};'
                    f'padding:2px 6px;max-width:520px">{html.escape(text)}</td>{rewards}'
                    f'<td style="padding:2px 6px">{html.escape(str(rec["step_sources"][k]))}</td>'
                    f'<td style="text-align:right;padding:2px 6px">{_fmt(rec["step_advantages"][k], True)}</td>'
                    f'<td style="padding:2px 6px">{mark}</td></tr>')
    table = f'<table style="border-collapse:collapse;font-size:13px"><tr>{th}</tr>{"".join(body)}</table>'
    return f'<div class="she-rollout" style="margin:8px 0 14px">{head}{table}{render_tokens(rec, reader, scale)}</div>'


def render_tokens(rec: dict, reader: str = "combined", scale: float | None = None) -> str:
    """The completion token by token: background = advantage colour, underline = the token's step reward colour."""
    scale = scale or advantage_scale([rec])
    colour = {s: reward_colour(_reward(rec, reader, k)) for k, s in enumerate(rec["steps"])}
    spans = []
    for i, (t, a, s) in enumerate(zip(rec["tokens"], rec["token_advantages"], rec["token_steps"])):
        shown = html.escape(t).replace("\n", "&#9166;<br>") or "&#8203;"
        line = f"border-bottom:3px solid {colour[s]};" if s in colour else "border-bottom:3px solid transparent;"
        spans.append(f'<span title="token {i} &middot; {s or "no step"} &middot; advantage {a:+.3f}" '
                     f'style="background:{advantage_colour(a, scale)};{line}white-space:pre-wrap">{shown}</span>')
    return (f'<div style="font-family:monospace;font-size:12.5px;line-height:1.9;margin-top:6px;padding:6px;'
            f'border:1px solid #ddd;max-width:900px">{"".join(spans)}</div>')


def legend(scale: float) -> str:
    """Colour keys: step reward 0 -> 1, token advantage -scale -> +scale."""
    rew = ", ".join(reward_colour(x) for x in np.linspace(0, 1, 5))
    adv = ", ".join(advantage_colour(x, scale) for x in np.linspace(-scale, scale, 5))
    bar = '<span style="display:inline-block;width:120px;height:10px;background:linear-gradient(to right, {});' \
          'vertical-align:middle;margin:0 4px"></span>'
    return (f'<div style="font-size:12px;margin:4px 0">step reward 0 {bar.format(rew)} 1 &nbsp;&nbsp; '
            f'token advantage {-scale:+.2f} {bar.format(adv)} {scale:+.2f} &nbsp;&nbsp; '
            f'<span style="background:{NO_READING}">&nbsp;grey&nbsp;</span> no reading</div>')


def render_group(records: list[dict], reader: str = "combined") -> str:
    """A group: the pair, an overview row per rollout, then every rollout (shared advantage scale)."""
    if not records:
        return "<p>(no rollouts)</p>"
    r0, scale = records[0], advantage_scale(records)
    head = (f'<div style="font-size:14px"><b>query</b> {html.escape(str(r0["query"]))} &middot; <b>product</b> '
            f'{html.escape(str(r0["title"]))} &middot; <b>human label</b> {html.escape(str(r0["label"]))} &middot; '
            f'step {r0["step"]}, group {r0["group"]}, {len(records)} rollouts, colours: {reader} reward</div>')
    rows = "".join(
        f'<tr><td style="padding:2px 6px">{r["rollout"]}</td><td style="padding:2px 6px">{html.escape(r["grade"] or "(none)")}'
        f'</td><td style="padding:2px 6px">{"&#10003;" if r["correct"] else "&#10007;"}</td>'
        f'<td style="padding:2px 6px">{_fmt(r["outcome_advantage"], True)}</td>'
        + "".join(_cell(_fmt(_reward(r, reader, k)), reward_colour(_reward(r, reader, k))) for k in range(len(r["steps"])))
        + "</tr>" for r in records)
    names = "".join(f'<th style="padding:2px 6px">{s}</th>' for s in r0["steps"])
    overview = (f'<table style="border-collapse:collapse;font-size:13px;margin:6px 0"><tr><th>rollout</th><th>grade</th>'
                f'<th>right</th><th>outcome adv.</th>{names}</tr>{rows}</table>')
    return head + legend(scale) + overview + "".join(render_rollout(r, reader, scale) for r in records)


def page(body: str, title: str = "stepwise-reward inspector") -> str:
    """A self-contained HTML document around ``body`` (inline styles only, no scripts)."""
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body style="font-family:system-ui,sans-serif;margin:16px;color:#1f2328">'
            f'<h3 style="margin:0 0 6px">{html.escape(title)}</h3>{body}</body></html>')


# ---------------------------------------------------------------------------------------------- state
class InspectorState:
    """The selection behind the widget: run -> query -> group (step, group) -> rollout, and the reward reader.

    ``sources`` maps a run name to its rollouts.jsonl path or to a list of records. Every ``select_*`` validates its
    argument, resets what depends on it (a new run selects its first query, a new query its first group, a new group
    rollout 0) and calls each ``on_change`` callback with the state."""

    def __init__(self, sources: dict):
        if not sources:
            raise ValueError("no rollout source: pass {run name: rollouts.jsonl path or records}")
        self.sources, self._loaded, self._callbacks = dict(sources), {}, []
        self.reader, self.run, self.query, self.group_key, self.rollout = "combined", None, None, None, 0
        self.select_run(next(iter(self.sources)))

    @classmethod
    def from_runs(cls, runs_dir: str | Path) -> "InspectorState | None":
        """A state over every rollout log under ``runs_dir``; None when there is none."""
        logs = rollout_logs(runs_dir)
        return cls(logs) if logs else None

    # --- data
    @property
    def runs(self) -> list[str]:
        return list(self.sources)

    def records(self, run: str | None = None) -> list[dict]:
        run = run or self.run
        if run not in self._loaded:
            src = self.sources[run]
            self._loaded[run] = load_rollouts(src) if isinstance(src, (str, Path)) else list(src)
        return self._loaded[run]

    @property
    def queries(self) -> list[str]:
        """The run's queries in order of first appearance."""
        return list(dict.fromkeys(r["query"] for r in self.records()))

    @property
    def groups(self) -> list[tuple[int, int]]:
        """(step, group) of every group of the current query, in training order."""
        return sorted({(r["step"], r["group"]) for r in self.records() if r["query"] == self.query})

    @property
    def group(self) -> list[dict]:
        """The current group's rollouts, by rollout index."""
        return sorted((r for r in self.records() if r["query"] == self.query and (r["step"], r["group"]) == self.group_key),
                      key=lambda r: r["rollout"])

    @property
    def current(self) -> dict:
        return self.group[self.rollout]

    # --- selection
    def on_change(self, callback) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for cb in self._callbacks:
            cb(self)

    def select_run(self, run: str) -> None:
        if run not in self.sources:
            raise KeyError(f"unknown run {run!r}; choose one of {self.runs}")
        self.run = run
        if not self.records():
            raise ValueError(f"run {run!r} has no rollouts")
        self.select_query(self.queries[0])

    def select_query(self, query: str) -> None:
        if query not in self.queries:
            raise KeyError(f"query {query!r} is not in run {self.run!r}")
        self.query = query
        self.select_group(self.groups[0])

    def select_group(self, key) -> None:
        key = tuple(key)
        if key not in self.groups:
            raise KeyError(f"no group {key} for query {self.query!r}; choose one of {self.groups}")
        self.group_key, self.rollout = key, 0
        self._changed()

    def select_rollout(self, i: int) -> None:
        if not 0 <= i < len(self.group):
            raise IndexError(f"rollout {i} outside 0..{len(self.group) - 1}")
        self.rollout = int(i)
        self._changed()

    def select_reader(self, reader: str) -> None:
        if reader not in READERS:
            raise ValueError(f"unknown reader {reader!r}; choose one of {READERS}")
        self.reader = reader
        self._changed()

    # --- views
    def html(self) -> str:
        """The current rollout (shading scaled to its group) with the group's colour legend."""
        scale = advantage_scale(self.group)
        return legend(scale) + render_rollout(self.current, self.reader, scale)

    def group_html(self) -> str:
        return render_group(self.group, self.reader)

    def export_html(self, path: str | Path) -> Path:
        """Write the current group as a self-contained HTML page."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(self.group_html(), f"stepwise-reward inspector: {self.run}"))
        return path


# ---------------------------------------------------------------------------------------------- widget
class Inspector:
    """ipywidgets on an :class:`InspectorState`: run, query and group menus, a rollout slider, reward-reader
    buttons and the rendered rollout. Displayed, it also carries the group as text/html (front ends without widgets
    show that)."""

    def __init__(self, state: InspectorState):
        import ipywidgets as w

        self.state, self._syncing = state, False
        self.run = w.Dropdown(options=state.runs, description="run")
        self.reader = w.ToggleButtons(options=list(READERS), description="colour by")
        self.query = w.Dropdown(description="query", layout=w.Layout(width="70%"))
        self.group = w.Dropdown(description="group")
        self.rollout = w.IntSlider(description="rollout", min=0, max=0, continuous_update=False)
        self.view = w.HTML()
        for widget, select in ((self.run, state.select_run), (self.reader, state.select_reader),
                               (self.query, state.select_query), (self.group, state.select_group),
                               (self.rollout, state.select_rollout)):
            widget.observe(self._forward(select), names="value")
        state.on_change(self.sync)
        self.sync(state)
        self.widget = w.VBox([w.HBox([self.run, self.reader]), self.query, w.HBox([self.group, self.rollout]),
                              self.view])

    def _forward(self, select):
        def handler(change):
            if not self._syncing and change["new"] is not None:
                select(change["new"])
        return handler

    def sync(self, state: InspectorState) -> None:
        """Set every control from the state (without echoing the changes back to it) and re-render."""
        self._syncing = True
        try:
            self.run.value = state.run
            self.reader.value = state.reader
            self.query.options = state.queries
            self.query.value = state.query
            self.group.options = [(f"step {s}, group {g}", (s, g)) for s, g in state.groups]
            self.group.value = state.group_key
            self.rollout.max = len(state.group) - 1
            self.rollout.value = state.rollout
            self.view.value = state.html()
        finally:
            self._syncing = False

    def _repr_mimebundle_(self, **kwargs):
        return {**self.widget._repr_mimebundle_(**kwargs), "text/html": self.state.group_html()}


# ------------------------------------------------------------------------------------------------ demo
def demo_group(ex, tokenizer, scale="esci", genrm=None, seed: int = 0, order: str = "grade_first") -> list[dict]:
    """A rollout group in the log's schema, with no RL run: the teacher rationale of ``ex`` (a row with the facts
    columns), one corruption of each kind (she_lib.corruptions) and the teacher rationale written for another grade,
    scored by the hybrid examiner (``genrm`` optional; when given it reads every step) and credited like SRPO (she_lib.srpo: outcome reward,
    group-normalised outcome advantage, step advantages with critical steps, token advantages; the functions'
    default weights)."""
    import torch

    from .srpo import decision_credit, step_advantages, token_advantages

    scale = get_scale(scale)
    ex = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for k, v in dict(ex).items()}
    rng = random.Random(seed)
    other = next(w for w in scale.words if w != ex["label"])
    texts = [("teacher", teacher_rationale(ex, order))]
    texts += [(f"corrupt:{k}", corrupt(ex, k, rng, scale).rationale(order)) for k in KINDS]
    texts.append((f"teacher rationale for {other}", teacher_rationale({**ex, "label": other}, order)))
    # score_all: the GenRM reads every step (its column is shown), the combined reward stays verifier_first's
    exam = Examiner(genrm, HybridConfig(score_all=True), scale).examine([{**ex, "rationale": t} for _, t in texts])
    reward = torch.tensor(OutcomeReward(scale)(None, [t for _, t in texts], [ex["label"]] * len(texts)))
    outcome = (reward - reward.mean()) / (reward.std() + 1e-4)  # TRL's group-normalised GRPO advantage
    judged = torch.tensor(exam.judged())
    steps, code = step_advantages(torch.tensor(exam.rewards), torch.tensor(exam.correct), len(texts), judged=judged)
    decision = decision_credit(steps, judged)
    out = []
    for i, (origin, text) in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        decoded, spans = completion_step_spans(ids, tokenizer, scale)
        adv = token_advantages(outcome[i:i + 1].double(), steps[i:i + 1], [spans], len(ids),
                               decision=decision[i:i + 1])[0]
        out.append(rollout_record(
            step=0, group=0, rollout=i, example=ex, completion=decoded, grade=parse(decoded, scale).grade,
            correct=exam.correct[i], outcome_reward=reward[i], outcome_advantage=outcome[i],
            step_rewards={"verifier": exam.verifier[i], "genrm": exam.genrm[i] if genrm is not None else None,
                          "combined": exam.rewards[i]},
            step_sources=exam.sources[i], step_advantages=steps[i], critical=code[i],
            tokens=[tokenizer.decode([t]) for t in ids], token_advantages=adv,
            token_steps=token_steps(spans, len(ids)), origin=origin))
    return out


def demo_example(df):
    """A row of ``df`` whose corruptions all touch different steps: query terms both matched and missing."""
    ok = df["matched_terms"].map(len).gt(0) & df["missing_terms"].map(len).gt(0) & df["label"].ne("Irrelevant")
    return (df[ok] if ok.any() else df).iloc[0]
