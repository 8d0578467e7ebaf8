import { assert, describe, it } from "@effect/vitest"
import { Redacted } from "effect"
import * as Kubeconfig from "../../src/domain/Kubeconfig.ts"
import * as ManagedKubeconfigSecret from "../../src/domain/ManagedKubeconfigSecret.ts"

const TOKEN = "SECRET-TOKEN-value"
const ISSUED = Date.UTC(2026, 0, 2, 3, 4, 5, 600)
const EXPIRES = Date.UTC(2026, 0, 3, 3, 4, 5, 600)
const b64 = (text: string) => Buffer.from(text, "utf8").toString("base64")
const unb64 = (text: string | undefined) => Buffer.from(text ?? "", "base64").toString("utf8")

const kubeconfig = Kubeconfig.buildManaged({ cluster: { server: "https://api:6443" }, token: Redacted.make(TOKEN) })
const written = ManagedKubeconfigSecret.desired({
  kubeconfig,
  token: Redacted.make(TOKEN),
  lifetime: { issuedAt: ISSUED, expiresAt: EXPIRES },
  sourceHash: "abc123"
})

describe("ManagedKubeconfigSecret", () => {
  describe("desired", () => {
    it("writes the kubeconfig and token as base64 data", () => {
      assert.deepStrictEqual(Object.keys(written.data).sort(), ["kubeconfig", "token"])
      assert.strictEqual(unb64(written.data["kubeconfig"]), kubeconfig)
      assert.strictEqual(unb64(written.data["token"]), TOKEN)
    })

    it("writes the lifetime (second precision, UTC) and the source hash", () => {
      assert.deepStrictEqual(written.annotations, {
        "proxy.open-cluster-management.io/managed-kubeconfig-token-expiration": "2026-01-03T03:04:05Z",
        "proxy.open-cluster-management.io/managed-kubeconfig-token-issued-at": "2026-01-02T03:04:05Z",
        "proxy.open-cluster-management.io/source-kubeconfig-hash": "abc123"
      })
    })

    it("keeps annotations others added and overrides ours", () => {
      const merged = ManagedKubeconfigSecret.mergeMetadata(
        { "example.com/owner": "team-a", [ManagedKubeconfigSecret.sourceHashAnnotation]: "old" },
        written.annotations
      )
      assert.strictEqual(merged["example.com/owner"], "team-a")
      assert.strictEqual(merged[ManagedKubeconfigSecret.sourceHashAnnotation], "abc123")
      assert.strictEqual(Object.keys(merged).length, 4)
      assert.deepStrictEqual(ManagedKubeconfigSecret.mergeMetadata(undefined, written.annotations), written.annotations)
    })
  })

  describe("observe", () => {
    it("reads back what desired wrote", () => {
      const observed = ManagedKubeconfigSecret.observe(written)
      assert.strictEqual(observed._tag, "Present")
      if (observed._tag === "Present") {
        assert.deepStrictEqual(observed.lifetime, { issuedAt: ISSUED - 600, expiresAt: EXPIRES - 600 })
        assert.strictEqual(observed.sourceHash, "abc123")
        assert.strictEqual(Redacted.value(observed.token), TOKEN)
      }
    })

    it("reads the token from the kubeconfig when there is no token key (Go provisioner Secrets)", () => {
      const { token: _, ...data } = written.data
      const observed = ManagedKubeconfigSecret.observe({ data, annotations: written.annotations })
      assert.strictEqual(observed._tag === "Present" && Redacted.value(observed.token), TOKEN)
    })

    it("reports a missing Secret", () => {
      assert.deepStrictEqual(ManagedKubeconfigSecret.observe(undefined), { _tag: "Missing" })
    })

    const without = (key: string) => Object.fromEntries(Object.entries(written.annotations).filter(([k]) => k !== key))
    it.each([
      { name: "no data", secret: { annotations: written.annotations }, reason: "MissingKubeconfig" },
      { name: "empty kubeconfig", secret: { data: { ...written.data, kubeconfig: "" }, annotations: written.annotations }, reason: "MissingKubeconfig" },
      {
        name: "no token anywhere",
        secret: { data: { kubeconfig: b64("users: []\n") }, annotations: written.annotations },
        reason: "MissingToken"
      },
      { name: "no expiration", secret: { data: written.data, annotations: without(ManagedKubeconfigSecret.expirationAnnotation) }, reason: "MissingAnnotation" },
      { name: "no issued-at", secret: { data: written.data, annotations: without(ManagedKubeconfigSecret.issuedAtAnnotation) }, reason: "MissingAnnotation" },
      { name: "no hash", secret: { data: written.data, annotations: without(ManagedKubeconfigSecret.sourceHashAnnotation) }, reason: "MissingAnnotation" },
      {
        name: "unparsable expiration",
        secret: { data: written.data, annotations: { ...written.annotations, [ManagedKubeconfigSecret.expirationAnnotation]: "tomorrow" } },
        reason: "InvalidAnnotation"
      },
      {
        name: "issued after expiry",
        secret: {
          data: written.data,
          annotations: { ...written.annotations, [ManagedKubeconfigSecret.issuedAtAnnotation]: "2026-01-04T00:00:00Z" }
        },
        reason: "InvalidLifetime"
      }
    ])("judges $name as $reason", ({ reason, secret }) => {
      const observed = ManagedKubeconfigSecret.observe(secret)
      assert.strictEqual(observed._tag, "Unreadable")
      if (observed._tag === "Unreadable") {
        assert.strictEqual(observed.reason, reason)
        assert.notInclude(observed.message, TOKEN)
      }
    })
  })
})

describe("ManagedKubeconfigSecret identity", () => {
  const claims = (body: unknown) => `e30.${Buffer.from(JSON.stringify(body)).toString("base64url")}.sig`

  it("reads the ServiceAccount UID from a bound token's claims, and nothing from anything else", () => {
    const uid = "6c9d4f3e-0000-4000-8000-000000000001"
    assert.strictEqual(ManagedKubeconfigSecret.serviceAccountUidOf(Redacted.make(claims({ "kubernetes.io": { serviceaccount: { uid } } }))), uid)
    for (const token of ["opaque-token", "a.b.c", claims({ sub: "x" }), claims({ "kubernetes.io": { serviceaccount: { uid: 7 } } }), "a.b"]) {
      assert.isUndefined(ManagedKubeconfigSecret.serviceAccountUidOf(Redacted.make(token)), token)
    }
  })

  it("records the UID and connection, and reads the UID from the token when the annotation is missing", () => {
    const uid = "uid-1"
    const token = Redacted.make(claims({ "kubernetes.io": { serviceaccount: { uid } } }))
    const lifetime = { issuedAt: Date.UTC(2026, 0, 1), expiresAt: Date.UTC(2026, 0, 2) }
    const connection = ManagedKubeconfigSecret.connectionHash({ server: "https://a:6443" })
    const contents = ManagedKubeconfigSecret.desired({ kubeconfig: "k", token, lifetime, sourceHash: "h", serviceAccountUid: uid, connectionHash: connection })
    const read = ManagedKubeconfigSecret.observe(contents)
    assert.strictEqual(read._tag === "Present" ? read.serviceAccountUid : undefined, uid)
    assert.strictEqual(read._tag === "Present" ? read.connectionHash : undefined, connection)
    const { [ManagedKubeconfigSecret.serviceAccountUidAnnotation]: _, ...older } = contents.annotations
    const legacy = ManagedKubeconfigSecret.observe({ data: contents.data, annotations: older })
    assert.strictEqual(legacy._tag === "Present" ? legacy.serviceAccountUid : undefined, uid)
    assert.isTrue(ManagedKubeconfigSecret.isWrittenByUs(contents.annotations))
    assert.isFalse(ManagedKubeconfigSecret.isWrittenByUs({ other: "x" }))
  })

  it("the connection hash follows server, CA and TLS name, not the credentials; a blanked Secret reads as Unreadable", () => {
    const base = { server: "https://a:6443", certificateAuthorityData: "Q0E=" }
    const hash = ManagedKubeconfigSecret.connectionHash(base)
    assert.strictEqual(ManagedKubeconfigSecret.connectionHash({ ...base }), hash)
    assert.notStrictEqual(ManagedKubeconfigSecret.connectionHash({ ...base, server: "https://b:6443" }), hash)
    assert.notStrictEqual(ManagedKubeconfigSecret.connectionHash({ ...base, certificateAuthorityData: "Q0I=" }), hash)
    assert.notStrictEqual(ManagedKubeconfigSecret.connectionHash({ ...base, tlsServerName: "x" }), hash)
    const blank = ManagedKubeconfigSecret.observe({ data: ManagedKubeconfigSecret.blanked.data, annotations: { a: "b" } })
    assert.strictEqual(blank._tag, "Unreadable")
  })
})
