import { assert, describe, it } from "@effect/vitest"
import * as OwnWrites from "../../src/kube/OwnWrites.ts"

const object = (uid: string, resourceVersion: string) => ({ metadata: { uid, resourceVersion } })

describe("OwnWrites", () => {
  it("recognises the versions it was given, and only those", () => {
    const own = OwnWrites.make()
    own.add(object("secret", "41"))
    assert.isTrue(own.has(object("secret", "41")))
    assert.isFalse(own.has(object("secret", "42")))
  })

  it("does not mistake another object's equal resourceVersion (another etcd) for its own write", () => {
    const own = OwnWrites.make()
    own.add(object("hub-addon", "1234"))
    assert.isFalse(own.has(object("hosting-source-secret", "1234")))
  })

  it("ignores objects without a resourceVersion and forgets the oldest beyond its capacity", () => {
    const own = OwnWrites.make(2)
    own.add({ metadata: { uid: "a" } })
    own.add(undefined)
    assert.isFalse(own.has({ metadata: { uid: "a" } }))
    own.add(object("a", "1"))
    own.add(object("a", "2"))
    own.add(object("a", "3"))
    assert.isFalse(own.has(object("a", "1")))
    assert.isTrue(own.has(object("a", "2")))
    assert.isTrue(own.has(object("a", "3")))
  })
})
