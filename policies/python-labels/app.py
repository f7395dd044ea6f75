"""A planner in Python (the `ckpt:policy/planner@0.2.0` world): containers steer their own
checkpoints with labels.

- `checkpoint.skip=true` denies the checkpoint.
- `checkpoint.compress=zstd|gzip|none` sets the compression of every export.
- `checkpoint.leave-running=true` keeps the container running.
Settings: {"max-memory-bytes": N} denies containers that use more memory than N.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types

COMPRESSIONS = {"zstd": types.Compression.ZSTD, "gzip": types.Compression.GZIP, "none": types.Compression.NONE}


def parse(settings):
    data = json.loads(settings) if settings.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("settings must be a JSON object")
    # The first release's snake_case name is still read, as the Rust policies read theirs.
    if "max_memory_bytes" in data:
        data["max-memory-bytes"] = data.pop("max_memory_bytes")
    unknown = set(data) - {"max-memory-bytes"}
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    limit = data.get("max-memory-bytes")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise ValueError("max-memory-bytes must be a positive integer")
    return data


def labels(container):
    return {kv.key: kv.value for kv in container.labels}


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PolicyInfo(
            name="python-labels",
            version="0.3.0",
            decisions=[types.DecisionKind.PLAN],
            settings_schema='{"type":"object","properties":{"max-memory-bytes":{"type":"integer","minimum":1}},"additionalProperties":false}',
        )

    def validate_settings(self, settings):
        try:
            parse(settings)
        except (ValueError, json.JSONDecodeError) as e:
            raise Err(str(e))

    def plan(self, settings, facts):
        config = parse(settings)
        container = facts.container
        wanted = labels(container)
        if wanted.get("checkpoint.skip") == "true":
            return types.PlanDecision_Deny([f"container {container.name} is labelled checkpoint.skip=true"])
        limit = config.get("max-memory-bytes")
        if limit is not None and container.memory_bytes > limit:
            return types.PlanDecision_Deny([f"container {container.name} uses {container.memory_bytes} bytes, more than {limit}"])
        options = facts.request.options
        reasons = ["as requested"]
        if wanted.get("checkpoint.leave-running") == "true":
            options.leave_running = True
            reasons.append("label checkpoint.leave-running=true")
        exports = list(facts.request.exports)
        compress = wanted.get("checkpoint.compress")
        if compress is not None:
            if compress not in COMPRESSIONS:
                return types.PlanDecision_Deny([f"label checkpoint.compress={compress} is not zstd, gzip or none"])
            for target in exports:
                target.compression = COMPRESSIONS[compress]
            reasons.append(f"label checkpoint.compress={compress}")
        log.log(log.Level.INFO, f"planned {container.name}: {', '.join(reasons)}")
        return types.PlanDecision_Plan(types.Plan(options=options, pre_dump=types.PreDumpPlan_None_(), exports=exports, plaintext_spill=False, reasons=reasons))

    def after_round(self, settings, facts, rounds):
        return types.RoundDecision(action=types.RoundAction.DUMP_NOW, reason="python-labels plans no rounds")
