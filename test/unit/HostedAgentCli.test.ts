/**
 * `tether hosted-agent` as a user meets it: help lists each component's flags under the names
 * the chart uses, and a command line that cannot work gets a one-line error naming the flag and
 * a non-zero exit before anything starts (no listener opened, no apiserver contacted: the
 * kubeconfig paths below do not exist, so getting past validation would fail differently).
 */
import { NodeServices } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Logger } from "effect"
import { Command } from "effect/cli"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as HostedAgentCommand from "../../src/cli/commands/HostedAgent.ts"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const tether = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  ChildProcess.spawnSync(process.execPath, [tetherEntry(), "hosted-agent", ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, POD_NAMESPACE: "agent", ...env }
  })

const required = ["--cluster-name=c1", "--cert=/tls/tls.crt", "--key=/tls/tls.key", "--kubeconfig=/nonexistent/hosting"]

describe("tether hosted-agent", () => {
  it("names each component's flags as the chart passes them", () => {
    const help = tether(["--help"])
    assert.strictEqual(help.status, 0)
    for (const flag of [
      "--components", "--health-probe-bind-address", "--cluster-name", "--hub-kubeconfig", "--target-namespace", "--token-expiration",
      "--apiserver-proxy-listen", "--apiserver-proxy-dial-timeout", "--apiserver-proxy-drain-timeout", "--apiserver-proxy-max-connections",
      "--service-proxy-listen", "--cert", "--key", "--hosted-service-proxy-mode", "--enable-impersonation",
      "--lease-namespace", "--renew-interval", "--token-freshness-margin", "--managed-kubeconfig"
    ]) {
      assert.match(help.stdout, new RegExp(`^  ${flag} `, "m"), flag)
    }
    assert.notMatch(help.stdout, /^ {2}--listen /m)
    assert.notMatch(help.stdout, /^ {2}--cleanup /m)
  })

  const cases: ReadonlyArray<readonly [string, ReadonlyArray<string>, RegExp]> = [
    ["an unknown component", [...required, "--components=provisioner,relay"], /--components: unknown component "relay"/],
    ["no component", [...required, "--components=,"], /--components must name at least one component/],
    [
      "a managed kubeconfig beside the provisioner",
      [...required, "--managed-kubeconfig=/etc/managed/kubeconfig"],
      /--managed-kubeconfig conflicts with the provisioner component/
    ],
    [
      "consumers without the provisioner and without a managed kubeconfig",
      [...required, "--components=apiserver-proxy,service-proxy"],
      /--managed-kubeconfig is required when --components leaves out provisioner \(apiserver-proxy, service-proxy need it\)/
    ],
    ["no cluster name", ["--cert=a", "--key=b"], /--cluster-name is required/],
    ["the service proxy without a certificate", ["--cluster-name=c1"], /--cert and --key are required/],
    ["a bad relay flag", [...required, "--apiserver-proxy-dial-timeout=0s"], /--apiserver-proxy-dial-timeout must be greater than 0/],
    ["a bad hosted mode", [...required, "--hosted-service-proxy-mode=Sideways"], /Sideways/],
    [
      "two components on one port",
      [...required, "--apiserver-proxy-listen=:9443", "--service-proxy-listen=127.0.0.1:9443"],
      /--apiserver-proxy-listen and --service-proxy-listen both listen on port 9443/
    ],
    ["the probe port reused", [...required, "--service-proxy-listen=:8000"], /--health-probe-bind-address and --service-proxy-listen both listen on port 8000/],
    ["a bad Lease flag", [...required, "--renew-interval=0s"], /--renew-interval must be greater than 0/],
    ["Relay mode without POD_NAMESPACE", [...required, "--hosted-service-proxy-mode=Relay", "--target-namespace=agent", "--lease-namespace=agent"], /POD_NAMESPACE/]
  ]

  // In process, through the command's own parser and checks; a log line would mean something started.
  it.each(cases)("refuses %s with one line naming the flag, before starting anything", (_what, args, message) => {
    const logs: Array<string> = []
    const previous = process.env["POD_NAMESPACE"]
    process.env["POD_NAMESPACE"] = String(message) === String(/POD_NAMESPACE/) ? "" : "agent"
    const exit = Effect.runSyncExit(
      Command.runWith(HostedAgentCommand.command, { version: "0" })(args).pipe(
        Effect.provide(Layer.merge(NodeServices.layer, Logger.layer([Logger.map(Logger.formatSimple, (line) => void logs.push(line))]))),
        Effect.timeout("5 seconds")
      )
    )
    process.env["POD_NAMESPACE"] = previous
    assert.isTrue(Exit.isFailure(exit))
    if (Exit.isFailure(exit)) {
      const error = Cause.squash(exit.cause) as { readonly _tag?: string; readonly message?: string }
      assert.strictEqual(error._tag, "UsageError")
      assert.match(error.message ?? "", message)
      assert.notInclude(error.message ?? "", "\n")
    }
    assert.deepStrictEqual(logs, [])
  })

  it("prints a refused command line as the CLI's ERROR block with the one-line message, and exits non-zero", () => {
    const run = tether([...required, "--components=provisioner,relay"])
    assert.strictEqual(run.status, 1)
    assert.deepStrictEqual(run.stderr.trim().split("\n").map((line) => line.trim()), [
      "ERROR",
      "--components: unknown component \"relay\" (expected provisioner, addon-lease, apiserver-proxy, service-proxy)"
    ])
  })

  it("a port in use stops the process with a non-zero exit naming the component", () => {
    const blocker = Net.createServer()
    return new Promise<void>((resolve, reject) => {
      blocker.listen(0, "127.0.0.1", () => {
        try {
          const port = (blocker.address() as Net.AddressInfo).port
          const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-hosted-agent-cli-"))
          const kubeconfig = Path.join(dir, "kubeconfig")
          Fs.writeFileSync(kubeconfig, [
            "apiVersion: v1", "kind: Config", "current-context: m",
            "clusters: [{name: m, cluster: {server: 'https://127.0.0.1:6443'}}]",
            "users: [{name: u, user: {token: abc}}]", "contexts: [{name: m, context: {cluster: m, user: u}}]"
          ].join("\n"))
          const run = tether([
            "--cluster-name=c1",
            "--components=apiserver-proxy",
            // No --kubeconfig: the relay alone needs no hosting client, so none is built.
            `--managed-kubeconfig=${kubeconfig}`,
            `--apiserver-proxy-listen=127.0.0.1:${port}`,
            "--health-probe-bind-address=127.0.0.1:0"
          ])
          Fs.rmSync(dir, { recursive: true, force: true })
          assert.strictEqual(run.status, 1)
          assert.match(run.stdout + run.stderr, /apiserver-proxy/)
          assert.match(run.stdout + run.stderr, /cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE|address already in use/)
          resolve()
        } catch (error) {
          reject(error)
        } finally {
          blocker.close()
        }
      })
    })
  })

  it("outside a pod, a component that needs the hosting cluster without --kubeconfig stops the start with one message", () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-hosted-agent-cli-"))
    try {
      const managed = Path.join(dir, "managed")
      Fs.writeFileSync(managed, "apiVersion: v1\nkind: Config\n")
      const run = tether([
        "--cluster-name=c1",
        "--components=addon-lease",
        `--managed-kubeconfig=${managed}`,
        "--health-probe-bind-address=127.0.0.1:0"
      ], { KUBERNETES_SERVICE_HOST: "", KUBERNETES_SERVICE_PORT: "" })
      assert.strictEqual(run.status, 1)
      assert.match(run.stdout + run.stderr, /not running in a cluster \(KUBERNETES_SERVICE_HOST\/PORT unset\): pass --kubeconfig/)
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
