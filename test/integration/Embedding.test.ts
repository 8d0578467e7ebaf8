/**
 * The runnable embedding example (test/embedding/ExampleController.ts) on real hub, hosting and
 * managed apiservers: its controller reads a managed-cluster Secret with the token tether issued,
 * keeps reading across a rotation (the client follows the new token in process), and its service
 * relay answers on the port it chose, reviewing callers with that same client.
 */
import { NodeServices } from "@effect/platform-node"
import { assert, beforeAll, describe, it } from "@effect/vitest"
import { CoreV1Api, RbacAuthorizationV1Api } from "@kubernetes/client-node"
import { Duration, Effect, Layer, Logger } from "effect"
import { Probes } from "../../src/observability/Probes.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { example } from "../embedding/ExampleController.ts"
import { noApiserver } from "../support/apiserver.ts"
import { until } from "../support/eventually.ts"
import * as HostedInstall from "../support/hostedInstall.ts"
import { freePort } from "../support/local.ts"
import { send } from "../support/send.ts"
import { useTrio } from "../support/trio.ts"

const b64 = (s: string) => Buffer.from(s).toString("base64")

describe.skipIf(noApiserver)("embedding example (real apiservers)", () => {
  const clusters = useTrio()
  let install!: HostedInstall.Install

  beforeAll(async () => {
    const { hosting, hub, managed } = clusters
    install = await Effect.runPromise(HostedInstall.prepare({ hosting, hub, managed }, "embed", "embed-agent"))
    const core = Apiserver.kubeConfig(managed).makeApiClient(CoreV1Api)
    await core.createNamespacedSecret({ namespace: "default", body: { metadata: { name: "greeting" }, data: { text: b64("hello from the managed cluster") } } })
    const rbac = Apiserver.kubeConfig(managed).makeApiClient(RbacAuthorizationV1Api)
    await rbac.createNamespacedRole({
      namespace: "default",
      body: { metadata: { name: "greeting-reader" }, rules: [{ apiGroups: [""], resources: ["secrets"], resourceNames: ["greeting"], verbs: ["get"] }] }
    })
    await rbac.createNamespacedRoleBinding({
      namespace: "default",
      body: {
        metadata: { name: "greeting-reader" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "greeting-reader" },
        subjects: [{ kind: "ServiceAccount", name: "cluster-proxy", namespace: "embed-agent" }]
      }
    })
  })

  it.live("the controller reads with a fresh token across a rotation, and the relay serves on its port", () =>
    Effect.gen(function*() {
      const { hosting, hub, managed } = clusters
      const logs: Array<string> = []
      const relayPort = yield* freePort
      yield* Layer.build(
        example({
          provisioner: {
            clusterName: install.cluster,
            source: { namespace: install.cluster, name: "external-managed-kubeconfig" },
            target: { namespace: install.agentNamespace, name: "cluster-proxy-managed-kubeconfig" },
            serviceAccount: { namespace: install.agentNamespace, name: "cluster-proxy" },
            settings: { tokenExpiration: Duration.hours(1), refreshBefore: Duration.minutes(5) },
            syncInterval: Duration.minutes(5),
            addon: { namespace: install.cluster, name: "cluster-proxy" }
          },
          clusters: { hostingKubeconfig: hosting.kubeconfigPath, hubKubeconfig: hub.kubeconfigPath },
          relay: {
            listen: { host: "127.0.0.1", port: relayPort },
            additionalServiceCa: undefined,
            trustedCallerUsernames: ["system:serviceaccount:team:reader"],
            tokenReviewCacheTtl: "10 seconds",
            kubeconfig: undefined
          }
        }).pipe(
          Layer.provide(Probes.layerNoServer),
          Layer.provide(NodeServices.layer),
          Layer.provide(Logger.layer([Logger.map(Logger.formatJson, (line) => void logs.push(line))]))
        )
      )
      const greetings = () => logs.filter((line) => line.includes("hello from the managed cluster")).length
      yield* until(Effect.sync(greetings), (n) => n >= 1, "the controller read the greeting")

      // A source change rotates the token; the controller's client follows it in process.
      // TokenRequests for the same ServiceAccount within one second return the same JWT (same
      // claims, deterministic signature), so let the clock pass the first token's second.
      yield* Effect.sleep("1100 millis")
      const changed = managed.kubeconfigYaml + "\npreferences: {}\n"
      yield* Effect.promise(() =>
        Apiserver.kubeConfig(hosting).makeApiClient(CoreV1Api).replaceNamespacedSecret({
          namespace: install.cluster,
          name: "external-managed-kubeconfig",
          body: { metadata: { name: "external-managed-kubeconfig", namespace: install.cluster }, data: { kubeconfig: b64(changed) } }
        })
      )
      yield* until(Effect.sync(() => logs.filter((line) => line.includes("apiserver token reloaded")).length), (n) => n >= 1, "the client took the new token")
      const before = greetings()
      yield* until(Effect.sync(greetings), (n) => n >= before + 2, "the controller keeps reading after the rotation")
      assert.isFalse(logs.some((line) => line.includes("forbidden") || line.includes("Unauthorized")))

      // The relay on the chosen port: no token is refused; the trusted caller is reviewed by the
      // managed cluster through the embedded client and gets as far as the Service lookup.
      const anonymous = yield* send(relayPort, { headers: { "cluster-proxy-proto": "http", "cluster-proxy-namespace": "default", "cluster-proxy-service": "web", "cluster-proxy-port": "80" } })
      assert.strictEqual(anonymous.status, 401)
      const trusted = yield* send(relayPort, {
        headers: {
          authorization: `Bearer ${install.readerToken}`,
          "cluster-proxy-proto": "http",
          "cluster-proxy-namespace": "default",
          "cluster-proxy-service": "no-such-service",
          "cluster-proxy-port": "80"
        }
      })
      assert.strictEqual(trusted.status, 502)
    }))
})
