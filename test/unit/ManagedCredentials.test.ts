/**
 * Reading the managed credentials from files: inline and file tokens, relative references,
 * TLS settings, the in-cluster form, and errors that name the file but never its content.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ManagedCredentials from "../../src/serviceproxy/ManagedCredentials.ts"

const caPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

const kubeconfig = (cluster: Record<string, string | boolean>, user: Record<string, string>) =>
  JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster }],
    users: [{ name: "u", user }],
    contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }],
    "current-context": "ctx"
  })

const withFolder = <A, E>(f: (dir: string) => Effect.Effect<A, E, NodeServices.NodeServices>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-managed-credentials-"))),
    (dir) => f(dir).pipe(Effect.provide(NodeServices.layer)),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )

describe("ManagedCredentials.read", () => {
  it.effect("reads an inline token, inline CA, tls-server-name and a path prefix", () =>
    withFolder((dir) =>
      Effect.gen(function*() {
        const path = Path.join(dir, "kubeconfig")
        Fs.writeFileSync(path, kubeconfig({
          server: "https://10.0.0.1:6443/k8s/clusters/c-1",
          "certificate-authority-data": Buffer.from(caPem).toString("base64"),
          "tls-server-name": "api.internal"
        }, { token: " inline-token \n" }))
        const snapshot = yield* ManagedCredentials.read({ _tag: "Kubeconfig", path })
        assert.strictEqual(Redacted.value(snapshot.token), "inline-token")
        assert.strictEqual(snapshot.serverUrl, "https://10.0.0.1:6443/k8s/clusters/c-1")
        assert.strictEqual(snapshot.server.pathPrefix, "/k8s/clusters/c-1")
        assert.deepStrictEqual(snapshot.tls, { ca: caPem, servername: "api.internal", insecure: false })
        assert.deepStrictEqual(snapshot.files, [path])
      })))

  it.effect("reads tokenFile and certificate-authority relative to the kubeconfig; the token does not change the endpoint key", () =>
    withFolder((dir) =>
      Effect.gen(function*() {
        const path = Path.join(dir, "kubeconfig")
        Fs.writeFileSync(Path.join(dir, "ca.crt"), caPem)
        Fs.writeFileSync(Path.join(dir, "token"), "file-token-1\n")
        Fs.writeFileSync(path, kubeconfig({ server: "https://host", "certificate-authority": "ca.crt", "insecure-skip-tls-verify": false }, { tokenFile: "token" }))
        const first = yield* ManagedCredentials.read({ _tag: "Kubeconfig", path })
        assert.strictEqual(Redacted.value(first.token), "file-token-1")
        assert.strictEqual(first.tls.ca, caPem)
        assert.deepStrictEqual(first.files, [path, Path.join(dir, "ca.crt"), Path.join(dir, "token")])
        Fs.writeFileSync(Path.join(dir, "token"), "file-token-2")
        const second = yield* ManagedCredentials.read({ _tag: "Kubeconfig", path })
        assert.strictEqual(second.endpointKey, first.endpointKey)
        assert.notStrictEqual(second.tokenId, first.tokenId)
      })))

  it.effect("refuses what cannot be used, naming the file and never quoting it", () =>
    withFolder((dir) =>
      Effect.gen(function*() {
        const cases: ReadonlyArray<readonly [string, string]> = [
          [kubeconfig({ server: "https://host" }, { "client-certificate-data": "QQ==", "client-key-data": "QQ==" }), "managed kubeconfig does not contain a bearer token"],
          [kubeconfig({ server: "https://host" }, { token: "   " }), "managed kubeconfig token is empty"],
          [kubeconfig({ server: "host:6443" }, { token: "secret-token" }), "managed apiserver URL must include scheme and host"],
          ["clusters: [ {{{ secret-token", "not a valid kubeconfig"]
        ]
        for (const [text, expected] of cases) {
          const path = Path.join(dir, "kubeconfig")
          Fs.writeFileSync(path, text)
          const error = yield* Effect.flip(ManagedCredentials.read({ _tag: "Kubeconfig", path }))
          assert.include(error.message, expected)
          assert.include(error.message, path)
          assert.notInclude(error.message, "secret-token")
        }
        const missing = yield* Effect.flip(ManagedCredentials.read({ _tag: "Kubeconfig", path: Path.join(dir, "absent") }))
        assert.include(missing.message, "cannot read the managed kubeconfig")
      })))

  it.effect("reads the in-cluster form, and says what is missing outside a cluster", () =>
    withFolder((dir) =>
      Effect.gen(function*() {
        Fs.writeFileSync(Path.join(dir, "token"), "sa-token\n")
        Fs.writeFileSync(Path.join(dir, "ca.crt"), caPem)
        const source = { _tag: "InCluster", tokenPath: Path.join(dir, "token"), caPath: Path.join(dir, "ca.crt") } as const
        const snapshot = yield* ManagedCredentials.read({ ...source, env: { KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "443" } })
        assert.strictEqual(snapshot.serverUrl, "https://[fd00::1]:443")
        assert.strictEqual(Redacted.value(snapshot.token), "sa-token")
        const outside = yield* Effect.flip(ManagedCredentials.read({ ...source, env: {} }))
        assert.include(outside.message, "KUBERNETES_SERVICE_HOST")
      })))
})
