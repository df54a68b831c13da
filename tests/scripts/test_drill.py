#!/usr/bin/env python3
"""The failover drill's report (scripts/drill/drill.py) judged on a recorded run: the short
drill of tests/fixtures/drill-run.json (a kill and a cut, every check held), as it is and with
one thing broken at a time, each of which the matching check must catch.

    python3 tests/scripts/test_drill.py        (scripts/test.sh runs it)
"""

import copy
import json
import os
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts", "drill"))
import drill  # noqa: E402 (found through the path above)

# The recorded drill's failover_timeout (its settings: 2.5 s, so the RTO limit is 3.5 s).
FAILOVER_TIMEOUT = 2.5

with open(os.path.join(ROOT, "tests", "fixtures", "drill-run.json")) as f:
    RECORDED = json.load(f)


def recorded():
    """A copy of the recorded run, for a test to break."""
    return copy.deepcopy(RECORDED)


def verdict(run, name, failover_timeout=FAILOVER_TIMEOUT):
    """The check or note of the report whose text starts with `name`: (held, seen)."""
    doc = drill.document(run, failover_timeout)
    for c in doc["checks"]:
        if c["check"].startswith(name):
            return c["ok"], c["detail"]
    for c in doc["notes"]:
        if c["note"].startswith(name):
            return c["ok"], c["detail"]
    raise AssertionError(f"no check {name!r} in {[c['check'] for c in doc['checks']]}")


def events_of(run, drill_number, event):
    return [e for e in run["events"] if e.get("drill") == drill_number and e["event"] == event]


class RecordedRun(unittest.TestCase):
    def test_every_check_holds_and_the_figures_are_the_runs(self):
        doc = drill.document(RECORDED, FAILOVER_TIMEOUT)
        self.assertTrue(doc["ok"], doc["checks"])
        self.assertEqual([c["ok"] for c in doc["checks"]], [True] * 8)
        s = doc["summary"]
        self.assertEqual((s["drills"], s["lost"], s["two_serving_primaries"]), (2, 0, 0))
        self.assertEqual((s["acknowledged_by_relayd"], s["submitted_to_sender"]), (661, 259))
        self.assertEqual((s["duplicates"], s["in_flight"], s["backlog_messages"]), (0, 3, 400))
        self.assertEqual([d["kind"] for d in doc["drills"]], ["kill", "cut"])
        self.assertEqual([d["rto_s"] for d in doc["drills"]], [2.528, 2.612])
        self.assertEqual([d["switchover_by"] for d in doc["drills"]], ["demote", "demote"])
        cut = doc["drills"][1]
        self.assertLess(cut["dc1_fenced_s"], cut["dc2_serving_s"])
        self.assertEqual(verdict(RECORDED, "rejoins that resumed")[0], True)

    def test_the_printed_report_says_pass_for_each_check(self):
        text = drill.render(drill.document(RECORDED, FAILOVER_TIMEOUT))
        self.assertEqual(text.count("\nPASS  "), 8, text)
        self.assertNotIn("FAIL", text)
        self.assertIn("RTO median 2.57 s, max 2.612 s", text)


class BrokenRun(unittest.TestCase):
    def test_an_acknowledged_message_never_delivered_is_lost(self):
        run = recorded()
        gone = next(i for i in run["delivered"] if i.startswith("backlog-1-"))
        del run["delivered"][gone]
        held, seen = verdict(run, "no acknowledged mail lost")
        self.assertFalse(held)
        self.assertIn(f"1 of 661 acknowledged never delivered, e.g. ['{gone}']", seen)
        self.assertFalse(drill.document(run, FAILOVER_TIMEOUT)["ok"])

    def test_both_nodes_seen_serving_at_once(self):
        run = recorded()
        # dc2 seen serving at the moment dc1 served before the first fault.
        fault = events_of(run, 1, "fault")[0]["t"]
        before = drill.at(run["polls"]["dc2"], fault)
        before["serving"] = True
        held, seen = verdict(run, "never two serving primaries")
        self.assertFalse(held)
        self.assertTrue(seen.startswith("seen at +"), seen)

    def test_a_failover_slower_than_the_limit(self):
        # The same run held to a failover_timeout of 1 s: 2.528 s is past 2 s.
        held, seen = verdict(recorded(), "failover within", failover_timeout=1.0)
        self.assertFalse(held)
        self.assertEqual(seen, "drill 1: 2.528, drill 2: 2.612")
        self.assertTrue(verdict(recorded(), "failover within")[0])

    def test_a_cut_primary_that_fenced_after_the_standby_served(self):
        run = recorded()
        fault = events_of(run, 2, "fault")[0]["t"]
        for entry in run["ha_log"]["dc1"]:
            if entry[0] >= fault and "relayd::ha: fenced" in entry[1]:
                entry[0] += 5.0
        held, seen = verdict(run, "a cut primary fenced itself")
        self.assertFalse(held, seen)

    def test_duplicates_beyond_what_was_in_flight(self):
        run = recorded()
        ids = sorted(run["delivered"])
        for ident in ids[:3]:  # as many as were in flight: allowed
            run["delivered"][ident] += 1
        self.assertTrue(verdict(run, "duplicates within")[0])
        run["delivered"][ids[3]] += 1
        held, seen = verdict(run, "duplicates within")
        self.assertFalse(held)
        self.assertEqual(seen, "4 duplicates, 3 in flight")

    def test_a_sender_that_never_moved_to_mx_20(self):
        run = recorded()
        events_of(run, 2, "back")[0]["via_dc2"] = 0
        held, seen = verdict(run, "the sender moved to MX 20")
        self.assertFalse(held)
        self.assertEqual(seen, "drill 1: 67, drill 2: 0")

    def test_a_submitted_message_never_delivered(self):
        run = recorded()
        del run["delivered"][run["submitted"][0]]
        held, seen = verdict(run, "every submitted message delivered")
        self.assertFalse(held)
        self.assertTrue(seen.startswith("1 of 259 not delivered"), seen)

    def test_a_switchover_that_never_ended(self):
        run = recorded()
        run["events"] = [e for e in run["events"] if not (e.get("drill") == 1 and e["event"] == "switched")]
        run["events"].append({"t": run["events"][-1]["t"], "drill": 1, "kind": "kill", "event": "failure",
                              "what": "no switchover"})
        held, seen = verdict(run, "every rejoin caught up")
        self.assertFalse(held)
        self.assertEqual(seen, "1: no switchover")

    def test_a_failure_outside_any_drill_fails_the_run(self):
        run = recorded()
        self.assertNotIn("the drill ran to its end", [c["check"] for c in drill.document(run, 2.5)["checks"]])
        run["events"].append({"t": run["events"][-1]["t"], "event": "failure", "what": "drain timed out"})
        self.assertEqual(verdict(run, "the drill ran to its end"), (False, "drain timed out"))

    def test_a_rejoin_by_snapshot_is_a_note_not_a_failure(self):
        run = recorded()
        events_of(run, 1, "caught_up")[0]["how"] = "snapshot"
        held, seen = verdict(run, "rejoins that resumed")
        self.assertFalse(held)
        self.assertEqual(seen, "drill 1: snapshot, drill 2: resumed")
        doc = drill.document(run, FAILOVER_TIMEOUT)
        self.assertTrue(doc["ok"])
        self.assertIn("\nNOTE  rejoins that resumed", drill.render(doc))

    def test_a_run_that_left_nothing_behind_fails(self):
        with tempfile.TemporaryDirectory() as work:
            doc = drill.document(drill.read_run(work), FAILOVER_TIMEOUT)
        self.assertFalse(doc["ok"])
        self.assertEqual(doc["summary"]["drills"], 0)
        self.assertIn("\nFAIL  failover within", drill.render(doc))


def main():
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    # One line for scripts/test.sh's count, as cargo's "test result:" lines are.
    print(f"python tests: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
