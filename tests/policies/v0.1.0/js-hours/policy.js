// An export gate in JavaScript: checkpoints may leave only within the allowed hours (UTC, from
// the facts' clock, never the machine's) and only below a size; over the size, volumes are
// dropped first if that is enough to say yes.
//
// Settings: {"hours": [start, end], "max_size_bytes": N}

function parse(settings) {
  const config = settings.trim() === "" ? {} : JSON.parse(settings);
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw "settings must be a JSON object";
  }
  for (const key of Object.keys(config)) {
    if (key !== "hours" && key !== "max_size_bytes") throw `unknown setting ${key}`;
  }
  const hours = config.hours ?? [0, 24];
  if (!Array.isArray(hours) || hours.length !== 2 || !hours.every((h) => Number.isInteger(h) && h >= 0 && h <= 24) || hours[0] >= hours[1]) {
    throw "hours must be [start, end] with 0 <= start < end <= 24";
  }
  const max = config.max_size_bytes;
  if (max !== undefined && !(Number.isInteger(max) && max > 0)) throw "max_size_bytes must be a positive integer";
  return { hours, max };
}

export function describe() {
  return {
    name: "js-hours",
    version: "0.1.0",
    decisions: ["gate"],
    settingsSchema: JSON.stringify({
      type: "object",
      additionalProperties: false,
      properties: { hours: { type: "array", items: { type: "integer" } }, max_size_bytes: { type: "integer" } },
    }),
  };
}

export function validateSettings(settings) {
  parse(settings);
}

export function plan(settings, facts) {
  return {
    tag: "plan",
    val: { options: facts.request.options, preDump: { tag: "none" }, exports: facts.request.exports, reasons: ["as requested"] },
  };
}

export function afterRound(settings, facts, rounds) {
  return { action: "dump-now", reason: "js-hours plans no rounds" };
}

export function gate(settings, facts) {
  const { hours, max } = parse(settings);
  const hour = new Date(facts.now).getUTCHours();
  if (hour < hours[0] || hour >= hours[1]) {
    return { tag: "deny", val: `exports are allowed from ${hours[0]}:00 to ${hours[1]}:00 UTC, not at ${facts.now}` };
  }
  if (max !== undefined && BigInt(facts.sizeBytes) > BigInt(max)) {
    if (facts.hasVolumes) {
      return { tag: "narrow", val: { dropRootfs: false, dropVolumes: true, reason: `${facts.sizeBytes} bytes is over ${max}: volumes stay behind` } };
    }
    return { tag: "deny", val: `${facts.sizeBytes} bytes is over the limit of ${max}` };
  }
  return { tag: "allow" };
}
