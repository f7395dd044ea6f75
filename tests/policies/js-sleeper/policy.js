// A policy that tries to block ckpt from JavaScript, which has no sleep of its own: it waits
// for the clock to move. The policy's clock is frozen, so this is a loop the fuel stops.

export function describe() {
  return { name: "js-sleeper", version: "0.1.0", decisions: ["plan", "gate"], settingsSchema: "{}" };
}

export function validateSettings(settings) {}

function waitAnHour() {
  const end = Date.now() + 3600 * 1000;
  while (Date.now() < end) {}
}

export function plan(settings, facts) {
  waitAnHour();
  return { tag: "deny", val: ["the hour passed"] };
}

export function afterRound(settings, facts, rounds) {
  return { action: "dump-now", reason: "no rounds" };
}

export function gate(settings, facts) {
  waitAnHour();
  return { tag: "allow" };
}
