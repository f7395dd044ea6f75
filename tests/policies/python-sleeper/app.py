"""A planner that tries to block ckpt: it sleeps for an hour in plan, and sleeps forever in gate.

The host's timers are always due, so the hour passes at once and plan answers; the endless
sleep becomes a busy loop that the fuel or the deadline stops.
"""

import time

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PolicyInfo(
            name="python-sleeper",
            version="0.1.0",
            decisions=[types.DecisionKind.PLAN, types.DecisionKind.GATE],
            settings_schema='{"type":"object"}',
        )

    def validate_settings(self, settings):
        pass

    def plan(self, settings, facts):
        time.sleep(3600)
        return types.PlanDecision_Deny(["woke up after time.sleep(3600)"])

    def after_round(self, settings, facts, rounds):
        return types.RoundDecision(action=types.RoundAction.DUMP_NOW, reason="no rounds")

    def gate(self, settings, facts):
        while True:
            time.sleep(1)
