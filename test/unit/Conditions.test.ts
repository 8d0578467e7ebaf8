import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import * as Conditions from "../../src/domain/Conditions.ts"

const T0 = Date.UTC(2026, 0, 2, 3, 4, 5, 678)
const T1 = Date.UTC(2026, 0, 2, 4, 0, 0)

const ready: Conditions.Condition = {
  type: "ManagedKubeconfigReady",
  status: "True",
  reason: "ManagedKubeconfigCreated",
  message: "Synced",
  lastTransitionTime: "2026-01-02T03:04:05Z",
  observedGeneration: 3
}
const available: Conditions.Condition = {
  type: "Available",
  status: "True",
  reason: "ProbeAvailable",
  message: "ok",
  lastTransitionTime: "2025-12-31T00:00:00Z"
}

describe("Conditions", () => {
  describe("time", () => {
    it.each([
      [T0, "2026-01-02T03:04:05Z"],
      [0, "1970-01-01T00:00:00Z"],
      [Date.UTC(2026, 11, 31, 23, 59, 59, 999), "2026-12-31T23:59:59Z"]
    ])("formats %d as %s", (ms, text) => {
      assert.strictEqual(Conditions.formatTime(ms), text)
    })

    it.each([
      ["2026-01-02T03:04:05Z", Date.UTC(2026, 0, 2, 3, 4, 5)],
      ["2026-01-02T03:04:05.5Z", Date.UTC(2026, 0, 2, 3, 4, 5, 500)],
      ["2026-01-02T05:04:05+02:00", Date.UTC(2026, 0, 2, 3, 4, 5)],
      ["2026-01-02t03:04:05z", Date.UTC(2026, 0, 2, 3, 4, 5)],
      ["2024-02-29T00:00:00Z", Date.UTC(2024, 1, 29)]
    ])("parses %s", (text, ms) => {
      assert.strictEqual(Conditions.parseTime(text), ms)
    })

    it.each(["", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-02 03:04:05Z", "2026-01-02T03:04:05", "yesterday", "2026-01-02T24:00:00Z"])(
      "refuses %j",
      (text) => {
        assert.isUndefined(Conditions.parseTime(text))
      }
    )

    it.prop(
      "parseTime reads formatTime back to the second",
      [Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 253_402_300_799_000 }))],
      ([ms]) => {
        assert.strictEqual(Conditions.parseTime(Conditions.formatTime(ms)), Math.floor(ms / 1000) * 1000)
      }
    )
  })

  describe("setCondition", () => {
    it("appends a new condition with the current time", () => {
      const result = Conditions.setCondition([available], { type: "ManagedKubeconfigReady", status: "False", reason: "SyncFailed", message: "boom" }, T1)
      assert.isTrue(result.changed)
      assert.deepStrictEqual(result.conditions, [available, {
        type: "ManagedKubeconfigReady",
        status: "False",
        reason: "SyncFailed",
        message: "boom",
        lastTransitionTime: "2026-01-02T04:00:00Z"
      }])
    })

    it("reports no change and keeps the array when nothing differs", () => {
      const conditions = [available, ready]
      const result = Conditions.setCondition(conditions, { ...ready }, T1)
      assert.isFalse(result.changed)
      assert.strictEqual(result.conditions, conditions)
    })

    it("keeps lastTransitionTime when only the reason or message changes", () => {
      const result = Conditions.setCondition([ready, available], { ...ready, reason: "ManagedKubeconfigFresh", message: "fresh" }, T1)
      assert.isTrue(result.changed)
      assert.deepStrictEqual(result.conditions, [{ ...ready, reason: "ManagedKubeconfigFresh", message: "fresh" }, available])
    })

    it("moves lastTransitionTime when the status flips, in place", () => {
      const result = Conditions.setCondition([available, ready], { ...ready, status: "False", reason: "SyncFailed" }, T1)
      assert.isTrue(result.changed)
      assert.deepStrictEqual(result.conditions, [available, { ...ready, status: "False", reason: "SyncFailed", lastTransitionTime: "2026-01-02T04:00:00Z" }])
    })

    it("counts an observedGeneration change as a change", () => {
      const bumped = Conditions.setCondition([ready], { ...ready, observedGeneration: 4 }, T1)
      assert.isTrue(bumped.changed)
      assert.strictEqual(bumped.conditions[0]?.observedGeneration, 4)
      assert.strictEqual(bumped.conditions[0]?.lastTransitionTime, ready.lastTransitionTime)
      const { observedGeneration: _, ...withoutGeneration } = ready
      const dropped = Conditions.setCondition([ready], withoutGeneration, T1)
      assert.isTrue(dropped.changed)
      assert.isFalse("observedGeneration" in (dropped.conditions[0] ?? {}))
    })

    it("finds conditions by type", () => {
      assert.strictEqual(Conditions.findCondition([available, ready], "ManagedKubeconfigReady"), ready)
      assert.isUndefined(Conditions.findCondition([available], "ManagedKubeconfigReady"))
    })
  })
})
