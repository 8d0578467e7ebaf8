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
