/**
 * The generated Secret among the add-on's status.relatedObjects: appended once, others' entries
 * kept in place, matched without the namespace (a schema may prune it), and the add-on state
 * says whether a write is still owed.
 */
import { assert, describe, it } from "@effect/vitest"
import { relatedSecret, stateOf, withRelated } from "../../src/provisioner/AddonStatus.ts"

describe("AddonStatus relatedObjects", () => {
  const ours = relatedSecret({ namespace: "agent", name: "cluster-proxy-managed-kubeconfig" })
  const theirs = { group: "example.io", resource: "widgets", name: "w1" }

  it("appends ours once and keeps the others", () => {
    assert.deepStrictEqual(withRelated(undefined, ours), [ours])
    assert.deepStrictEqual(withRelated([theirs], ours), [theirs, ours])
    assert.isUndefined(withRelated([theirs, ours], ours))
    // Pruned of its namespace by a schema: still ours, no second entry.
    assert.isUndefined(withRelated([{ group: "", resource: "secrets", name: ours.name }], ours))
    assert.deepStrictEqual(withRelated("not a list", ours), [ours])
  })

  it("the state says whether the entry is missing", () => {
    const object = (relatedObjects?: unknown) => ({ metadata: { name: "a", generation: 1 }, status: relatedObjects === undefined ? {} : { relatedObjects } })
    const missing = stateOf(object(), ours)
    assert.strictEqual(missing._tag === "Present" ? missing.listsRelated : undefined, false)
    const listed = stateOf(object([theirs, ours]), ours)
    assert.strictEqual(listed._tag === "Present" ? listed.listsRelated : undefined, true)
    const untracked = stateOf(object())
    assert.strictEqual(untracked._tag === "Present" ? untracked.listsRelated : undefined, true)
  })
})
