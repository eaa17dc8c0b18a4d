// A chair's controls: session steps for nurses (start baseline with patient id,
// session k of n and route; start infusion; recovery; discharge; free the chair)
// and per-patient limits for clinicians, each change confirmed with the old and the
// new limit. Controls the signed-in role may not use are not offered; the gateway
// judges every command again and a refusal is shown in words.

import { VITALS, el, formatValue } from "./format.js";
import { PRIORITY_RANK, SIMULATED_SITE } from "./ward.js";

/** @typedef {import("./ward.js").Ward} Ward */
/** @typedef {import("./ward.js").Chair} Chair */
/** @typedef {import("./ward.js").Phase} Phase */
/** @typedef {import("./ward.js").Vital} Vital */
/** @typedef {import("./ward.js").AlarmFrame} AlarmFrame */

/**
 * @typedef {object} RuleSpec  a `[[rules]]` entry as `GET /api/station` returns it
 * @property {string} id
 * @property {Vital} vital
 * @property {number|null} [low]
 * @property {number|null} [high]
 * @property {"high"|"medium"|"low"} priority
 * @property {Phase[]} phases
 * @property {number} [max_session]
 */

/**
 * @typedef {object} May
 * @property {boolean} ack
 * @property {boolean} set_session
 * @property {boolean} set_limit
 */

/**
 * @typedef {object} ControlsOptions
 * @property {(command: object) => boolean} send
 * @property {() => string} by  who acts
 * @property {() => May} may
 * @property {() => RuleSpec[]} rules
 * @property {(key: string) => Chair|undefined} chair  the chair as the ward holds it now
 * @property {(key: string) => AlarmFrame[]} alarms  the chair's active alarms, most urgent first
 * @property {(text: string, kind?: "error"|"info") => void} toast
 */

/** The next step of each phase, as the nurse sees it (docs/protocol.md: phases move one step forward). */
const STEPS = /** @type {Record<Phase, {phase: Phase, label: string}[]>} */ ({
  idle: [{ phase: "baseline", label: "Start baseline" }],
  baseline: [
    { phase: "infusion", label: "Start infusion" },
    { phase: "idle", label: "Call off (free chair)" },
  ],
  infusion: [{ phase: "recovery", label: "End infusion: start recovery" }],
  recovery: [{ phase: "discharged", label: "Discharge" }],
  discharged: [{ phase: "idle", label: "Free chair" }],
});

/** Steps after which the patient in the chair is no longer watched, and what stops. */
const ENDS_WATCH = /** @type {Partial<Record<Phase, {to: Phase, what: string}>>} */ ({
  baseline: { to: "idle", what: "The session is called off: the patient's alarms end and their values are forgotten." },
  recovery: { to: "discharged", what: "The patient's physiological alarms stop for this chair. This cannot be undone." },
});

export class ChairControls {
  /** @param {ControlsOptions} o */
  constructor(o) {
    this.o = o;
    this.dialog = /** @type {HTMLDialogElement} */ (document.getElementById("chair-dialog"));
    this.body = /** @type {HTMLElement} */ (document.getElementById("chair-dialog-body"));
    this.title = /** @type {HTMLElement} */ (document.getElementById("chair-dialog-title"));
    this.confirm = /** @type {HTMLDialogElement} */ (document.getElementById("confirm-dialog"));
    this.confirmText = /** @type {HTMLElement} */ (document.getElementById("confirm-text"));
    this.confirmYes = /** @type {HTMLButtonElement} */ (this.confirm.querySelector('button[value="yes"]'));
    /** @type {string|null} */
    this.chair = null;
    /** What the session the dialog was filled from said ([`sessionKey`]). @type {string|null} */
    this.shownSession = null;
    /** @type {(() => void)|null} */
    this.onConfirm = null;
    this.confirm.addEventListener("close", () => {
      if (this.confirm.returnValue === "yes" && this.onConfirm) this.onConfirm();
      this.onConfirm = null;
    });
    this.dialog.addEventListener("close", () => {
      this.chair = null;
    });
  }

  /**
   * @param {Chair} chair
   */
  open(chair) {
    this.chair = chair.key;
    this.fill(chair);
    if (!this.dialog.open) this.dialog.showModal();
  }

  /**
   * The chair's session changed while its controls are open: show it as it is now,
   * unless the user is in one of the dialog's fields (what they typed stays).
   * @param {Ward} ward
   */
  refresh(ward) {
    if (!this.chair || !this.dialog.open) return;
    const chair = ward.chairs.get(this.chair);
    if (!chair) {
      this.dialog.close();
      this.o.toast(`Chair ${this.chair} left the ward.`, "info");
      return;
    }
    // Refreshing snapshots bring the same session as new objects: only a change
    // redraws (a redraw loses what was typed and where the focus was).
    if (sessionKey(chair.session) === this.shownSession) return;
    const focus = document.activeElement;
    if (this.dialog.contains(focus) && (focus instanceof HTMLInputElement || focus instanceof HTMLSelectElement)) return;
    this.fill(chair);
  }

  /** @param {Chair} chair */
  fill(chair) {
    this.shownSession = sessionKey(chair.session);
    const s = chair.session;
    const phase = s?.phase ?? "idle";
    this.title.textContent = `Chair ${chair.key}${chair.site === SIMULATED_SITE ? " (SIMULATED)" : ""} — ${phase.toUpperCase()}${s?.patient && phase !== "idle" ? ` — ${s.patient}` : ""}`;
    this.body.replaceChildren();
    const may = this.o.may();
    if (may.set_session) this.body.append(this.sessionSection(chair, phase));
    // Everyone sees the limits in force for the patient; clinicians may change them.
    if (s?.patient && phase !== "idle" && phase !== "discharged") this.body.append(this.limitSection(chair, phase, may.set_limit));
    if (!may.set_session && !may.set_limit) this.body.append(el("p", "note", "Your role may view this chair only."));
  }

  /**
   * @param {Chair} chair
   * @param {Phase} phase
   */
  sessionSection(chair, phase) {
    const box = el("section", "session-controls");
    box.append(el("h3", "", "Session"));
    for (const step of STEPS[phase]) {
      if (step.phase === "baseline") {
        box.append(this.baselineForm(chair));
        continue;
      }
      const b = el("button", "step", step.label);
      b.type = "button";
      b.dataset.phase = step.phase;
      b.addEventListener("click", () => {
        const patient = chair.session?.patient;
        /** @type {Record<string, unknown>} */
        const command = { type: "set_session", chair: chair.key, phase: step.phase, by: this.o.by() };
        if (patient && step.phase !== "idle") command.patient = patient;
        const send = () => this.sendOrSay(command, `${step.label}: chair ${chair.key}`);
        // A step that ends the patient's watch cannot be taken back (phases only move
        // forward): a click on the wrong chair's button must not be enough.
        const ends = ENDS_WATCH[phase];
        if (!ends || step.phase !== ends.to) {
          send();
          return;
        }
        // The alarms the question names, each at the priority it shows.
        const named = new Map(this.o.alarms(chair.key).map((a) => [a.id, PRIORITY_RANK[a.priority]]));
        this.ask(`${step.label}: chair ${chair.key}${patient ? `, ${patient}` : ""}? ${ends.what}${this.endingAlarms(chair.key)}`, () => {
          // What was confirmed is what is sent: not if the chair changed meanwhile,
          // nor if it would end an alarm the question did not name.
          if (this.changedMeanwhile(chair.key, phase, patient)) return;
          const unnamed = this.o.alarms(chair.key).filter((a) => PRIORITY_RANK[a.priority] > (named.get(a.id) ?? -1));
          if (unnamed.length > 0) {
            this.o.toast(`NOT sent: chair ${chair.key} has an alarm you were not asked about: ${unnamed.map((a) => `${a.message} (${a.priority.toUpperCase()})`).join("; ")}. Look again.`, "error");
            return;
          }
          send();
        }, `Yes, ${step.label.toLowerCase()}`);
      });
      box.append(b);
    }
    return box;
  }

  /**
   * Whether chair `key`'s session left `phase` or `patient` since a question
   * about it was asked; if so the nurse is told, and nothing is sent.
   * @param {string} key
   * @param {Phase} phase
   * @param {string|undefined} patient
   */
  changedMeanwhile(key, phase, patient) {
    const now = this.o.chair(key)?.session;
    if ((now?.phase ?? "idle") === phase && now?.patient === patient) return false;
    this.o.toast(`NOT sent: chair ${key} changed while you were asked (now ${(now?.phase ?? "idle").toUpperCase()}${now?.patient ? `, ${now.patient}` : ""}). Look again.`, "error");
    return true;
  }

  /**
   * The chair's alarms that a discharge or a call-off ends, as a sentence: even a
   * latched or unacknowledged one ends, so the nurse is told which. With the
   * shipped rules that is every alarm of the chair: the physiological ones do not
   * apply once discharged (or end with the session called off), nor do the stale
   * and offline ones in `discharged` or `idle`.
   * @param {string} key
   */
  endingAlarms(key) {
    const ending = this.o.alarms(key);
    if (ending.length === 0) return "";
    const unacked = ending.filter((a) => !a.acknowledged_by).length;
    const listed = ending.slice(0, 3).map((a) => `${a.message} (${a.priority.toUpperCase()}${a.acknowledged_by ? "" : ", NOT acknowledged"})`);
    const more = ending.length > 3 ? `, and ${ending.length - 3} more` : "";
    const count = ending.length === 1 ? "1 alarm is still active and ends" : `${ending.length} alarms are still active and end`;
    const unackedNote = unacked > 0 ? `, ${unacked} not acknowledged` : "";
    return ` ${count} with it${unackedNote}: ${listed.join("; ")}${more}.`;
  }

  /** @param {Chair} chair */
  baselineForm(chair) {
    const form = el("form", "baseline-form");
    const patient = input("text", "patient", "Patient id", true);
    patient.maxLength = 128;
    const number = input("number", "session_number", "Session", false);
    number.min = "1";
    const count = input("number", "session_count", "of", false);
    count.min = "1";
    const route = el("select");
    route.name = "route";
    for (const r of ["iv", "im", "sublingual", "intranasal"]) {
      const o = el("option", "", r.toUpperCase());
      o.value = r;
      route.append(o);
    }
    const submit = el("button", "step", "Start baseline");
    submit.type = "submit";
    submit.dataset.phase = "baseline";
    form.append(label("Patient id", patient), label("Session", number), label("of", count), label("Route", route), submit);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      /** @type {Record<string, unknown>} */
      const command = { type: "set_session", chair: chair.key, phase: "baseline", patient: patient.value.trim(), route: route.value, by: this.o.by() };
      if (number.value) command.session_number = Number(number.value);
      if (count.value) command.session_count = Number(count.value);
      this.sendOrSay(command, `Start baseline: chair ${chair.key}, ${patient.value.trim()}`);
    });
    return form;
  }

  /**
   * Threshold rules that apply in this phase, with the limit in force for the
   * patient (their override, else the configured one); with `editable`, the
   * controls to change them.
   * @param {Chair} chair
   * @param {Phase} phase
   * @param {boolean} editable
   */
  limitSection(chair, phase, editable) {
    const box = el("section", "limit-controls");
    box.append(el("h3", "", editable ? "Limits for this patient" : "Limits in force for this patient (a clinician changes them)"));
    const table = el("table");
    const overrides = chair.session?.limits ?? {};
    const k = chair.session?.session_number;
    const patient = chair.session?.patient;
    for (const rule of this.o.rules()) {
      // Rules in force: this phase, and this session of the course (a rule with
      // max_session applies while the session number is unknown).
      if (!rule.phases.includes(phase)) continue;
      if (rule.max_session !== undefined && rule.max_session !== null && k !== undefined && k > rule.max_session) continue;
      for (const side of /** @type {const} */ (["low", "high"])) {
        const configured = rule[side];
        if (configured === undefined || configured === null) continue;
        const override = overrides[rule.id]?.[side];
        const current = override ?? configured;
        const own = override !== undefined && override !== null;
        const row = el("tr");
        row.dataset.rule = rule.id;
        row.dataset.side = side;
        row.append(
          el("td", "", `${VITALS[rule.vital].label} ${side === "low" ? "below" : "above"}`),
          el("td", "rule", `${rule.id} (${rule.priority})`),
          el("td", "now", own ? `${formatValue(current)} (patient)` : formatValue(current)),
        );
        table.append(row);
        if (!editable) continue;
        const field = input("number", `${rule.id}.${side}`, "", false);
        field.value = String(current);
        field.step = "any";
        const change = el("button", "change", "Change…");
        change.type = "button";
        change.addEventListener("click", () => {
          const next = Number(field.value);
          if (field.value === "" || !Number.isFinite(next) || next === current) return;
          this.ask(`Change ${VITALS[rule.vital].label} ${side} limit of ${rule.id} (${rule.priority}) for ${chair.session?.patient} in chair ${chair.key} from ${formatValue(current)} to ${formatValue(next)}?`, () => {
            if (this.limitChangedMeanwhile(chair.key, rule.id, side, phase, patient, current)) return;
            this.sendOrSay(this.limitCommand(chair.key, rule.id, side, next), `${rule.id} ${side} ${formatValue(current)} → ${formatValue(next)}`);
          });
        });
        const reset = el("button", "reset", "Configured");
        reset.type = "button";
        reset.hidden = !own;
        reset.title = `Back to the configured limits of ${rule.id}`;
        reset.addEventListener("click", () => {
          this.ask(`Put ${rule.id} (${rule.priority}) for ${chair.session?.patient} in chair ${chair.key} back to its configured ${side} limit (${formatValue(current)} → ${formatValue(configured)})?`, () => {
            if (this.limitChangedMeanwhile(chair.key, rule.id, side, phase, patient, current)) return;
            this.sendOrSay(this.limitCommand(chair.key, rule.id, side, undefined), `${rule.id} ${side} back to configured`);
          });
        });
        row.append(cell(field), cell(change), cell(reset));
      }
    }
    box.append(table);
    return box;
  }

  /**
   * Whether, since the question was asked, chair `key` got another patient or
   * phase, or `rule`'s `side` limit is no longer `shown` (another clinician
   * changed it): a limit goes to the patient and from the value the question
   * named, or not at all.
   * @param {string} key
   * @param {string} rule
   * @param {"low"|"high"} side
   * @param {Phase} phase
   * @param {string|undefined} patient
   * @param {number} shown
   */
  limitChangedMeanwhile(key, rule, side, phase, patient, shown) {
    if (this.changedMeanwhile(key, phase, patient)) return true;
    const configured = this.o.rules().find((r) => r.id === rule)?.[side];
    const now = this.o.chair(key)?.session?.limits?.[rule]?.[side] ?? configured;
    if (now === shown) return false;
    this.o.toast(`NOT sent: the ${side} limit of ${rule} in chair ${key} changed while you were asked (now ${now === undefined || now === null ? "none" : formatValue(now)}). Look again.`, "error");
    return true;
  }

  /**
   * A `set_limit` that changes one side of a rule: to `value`, or back to the
   * configured limit when undefined. set_limit replaces both sides, so the other
   * side goes as it is now, not as it was when the dialog was drawn (another
   * clinician may have changed it).
   * @param {string} chair
   * @param {string} rule
   * @param {"low"|"high"} side
   * @param {number|undefined} value
   */
  limitCommand(chair, rule, side, value) {
    const o = this.o.chair(chair)?.session?.limits?.[rule] ?? {};
    /** @type {Record<string, unknown>} */
    const command = { type: "set_limit", chair, rule, by: this.o.by() };
    const other = side === "low" ? "high" : "low";
    if (o[other] !== undefined && o[other] !== null) command[other] = o[other];
    if (value !== undefined) command[side] = value;
    return command;
  }

  /**
   * @param {string} text
   * @param {() => void} action
   * @param {string} [yes]  the confirming button's words
   */
  ask(text, action, yes = "Yes, change it") {
    this.confirmText.textContent = text;
    this.confirmYes.textContent = yes;
    this.onConfirm = action;
    this.confirm.returnValue = "";
    this.confirm.showModal();
  }

  /**
   * @param {object} command
   * @param {string} what
   */
  sendOrSay(command, what) {
    if (this.o.send(command)) this.o.toast(`Sent: ${what}`, "info");
    else this.o.toast(`NOT sent (not connected to the gateway): ${what}`, "error");
  }
}

/**
 * @param {string} type
 * @param {string} name
 * @param {string} placeholder
 * @param {boolean} required
 */
function input(type, name, placeholder, required) {
  const i = el("input");
  i.type = type;
  i.name = name;
  i.placeholder = placeholder;
  i.required = required;
  return i;
}

/**
 * @param {string} text
 * @param {HTMLElement} control
 */
function label(text, control) {
  const l = el("label", "", `${text} `);
  l.append(control);
  return l;
}

/** @param {HTMLElement} child */
function cell(child) {
  const td = el("td");
  td.append(child);
  return td;
}

/**
 * What of a session the dialog shows, whichever frame brought it (a snapshot's
 * session carries less than a session frame: no `previous`, another `change`).
 * @param {import("./ward.js").SessionFrame|null} s
 */
function sessionKey(s) {
  if (!s) return "";
  const { phase, patient, session_number, session_count, route, limits, discharge_ready } = s;
  return JSON.stringify([phase, patient, session_number, session_count, route, limits, discharge_ready]);
}
