/**
 * `tether credential-controller` as a user meets it, through the shipped entry point: the
 * contract flags with their defaults, and bad command lines that exit non-zero with a one-line
 * message naming the flag.
 */
import { assert, describe, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const tether = (args: ReadonlyArray<string>) =>
  ChildProcess.spawnSync(process.execPath, [tetherEntry(), "credential-controller", ...args], { encoding: "utf8", timeout: 30_000 })

describe("tether credential-controller CLI", () => {
  it("lists the contract flags with their defaults", () => {
    const help = tether(["--help"])
    assert.strictEqual(help.status, 0, help.stderr)
    for (const expected of [
      "--kubeconfig",
      "--hub-kubeconfig",
      "--hosting-cluster-name",
      "--source-secret-selector",
      "--identity-check-interval",
      "default 10m",
      "--token-expiration",
      "default 24h",
      "--refresh-before",
      "default 1h",
      "--kube-api-qps",
      "default 50",
      "--kube-api-burst",
      "default 100",
      "--health-probe-bind-address",
      'default ":8000"'
    ]) assert.include(help.stdout, expected)
  })

  it.each([
    { name: "no discovery source", args: [], expected: "one of --hub-kubeconfig or --source-secret-selector is required" },
    { name: "both sources", args: ["--hub-kubeconfig=/h", "--hosting-cluster-name=h", "--source-secret-selector=a=b"], expected: "exclude each other" },
    { name: "a hub without the hosting cluster's name", args: ["--hub-kubeconfig=/h"], expected: "--hosting-cluster-name is required" },
    { name: "a bad duration", args: ["--source-secret-selector=a=b", "--identity-check-interval=1d"], expected: 'invalid duration "1d"' },
    { name: "an unreadable kubeconfig", args: ["--source-secret-selector=a=b", "--kubeconfig=/nonexistent/kubeconfig"], expected: "failed to load kubeconfig /nonexistent/kubeconfig" }
  ])("exits non-zero on $name, saying what is wrong", ({ args, expected }) => {
    const run = tether(args)
    assert.notStrictEqual(run.status, 0)
    const output = run.stdout + run.stderr
    assert.include(output, expected)
    assert.notInclude(output, "    at ")
  })
})
