#!/usr/bin/env python3
"""Unit tests of the benchmark helpers that need no VM: python3 scripts/bench/test_bench.py"""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import all as allbench  # noqa: E402
import benchlib as B  # noqa: E402
import density as densitybench  # noqa: E402
import memory as memorybench  # noqa: E402
import vhost as vhostbench  # noqa: E402

MIB = 1 << 20


class RamMapping(unittest.TestCase):
    def test_chv_region_with_merged_neighbour(self):
        maps = [(65404 << 10, 0), (128 * MIB + (132 << 10), 23600), (2 * MIB, 8)]
        self.assertEqual(B.guest_ram_rss_kib(maps, "chv", 128), 23600)

    def test_chv_two_regions_above_gap(self):
        maps = [(3 * 1024 * MIB, 100), (1024 * MIB, 5)]
        self.assertEqual(B.guest_ram_rss_kib(maps, "chv", 4096), 105)

    def test_missing_or_ambiguous_is_none(self):
        self.assertIsNone(B.guest_ram_rss_kib([(64 * MIB, 1)], "chv", 128))
        two = [(128 * MIB, 1), (128 * MIB, 2)]
        self.assertIsNone(B.guest_ram_rss_kib(two, "qemu", 128))

    def test_qemu_ram_block(self):
        maps = [(128 * MIB, 28672), (65404 << 10, 0), (2 * MIB, 2048)]
        self.assertEqual(B.guest_ram_rss_kib(maps, "qemu", 128), 28672)

    def test_own_process_smaps_parse(self):
        maps = B.anon_mappings(os.getpid())
        self.assertTrue(all(size > 0 and rss >= 0 for size, rss in maps))
        fp = B.footprint(os.getpid(), "chv", 128)
        self.assertGreater(fp["pss_kib"], 0)
        self.assertGreaterEqual(fp["threads"], 1)


class Parsing(unittest.TestCase):
    def test_chvblk_lines(self):
        out = "x\r\nCHVBLK seqread 2097152 1000000000\r\nCHVBLK randread 100 500000000\r\n"
        r = allbench.parse_chvblk(out, "t")
        self.assertAlmostEqual(r["seqread_mib_s"], 2.0)
        self.assertAlmostEqual(r["randread_iops"], 200.0)

    def test_chvblk_error(self):
        with self.assertRaises(RuntimeError):
            allbench.parse_chvblk("CHVBLK-ERROR open 2\n", "t")

    def test_summary_and_ratio(self):
        runs = {"chv": [{"what": "boot", "pair": 1, "ready_s": 1.0}, {"pair": 2, "ready_s": 3.0}],
                "qemu": [{"ready_s": 4.0, "threads": None}], "host": []}
        med, ratios = allbench.summarize(runs)
        self.assertEqual(med["chv"]["ready_s"], 2.0)
        self.assertNotIn("pair", med["chv"])
        self.assertEqual(ratios, {"ready_s": 0.5})
        t = allbench.table(med, ratios, {"boot"})
        self.assertIn("| 2.00 | 4.00 | 0.50 |", t)

    def test_vhost_sections_by_device_size(self):
        sizes = {32 * MIB: "virtio-blk", 33 * MIB: "vhost-user-blk"}
        lines = "CHVBLK seqread 1048576 1000000000\r\nCHVBLK randread 10 1000000000\r\n"
        out = (f"DEV vda {33 * 2048}\r\n{lines}DEV vdb {32 * 2048}\r\n"
               f"{lines.replace('10 ', '20 ')}DEV fs\r\n{lines}GUEST-CMD-EXIT=0")
        r = vhostbench.parse_guest(out, sizes, "t")
        self.assertEqual(r["vhost-user-blk"]["randread_iops"], 10.0)
        self.assertEqual(r["virtio-blk"]["randread_iops"], 20.0)
        self.assertEqual(r["virtio-fs"]["seqread_mib_s"], 1.0)
        with self.assertRaises(RuntimeError):  # the share did not mount
            vhostbench.parse_guest(out[:out.index("DEV fs")], sizes, "t")
        with self.assertRaises(RuntimeError):  # a disk of another size
            vhostbench.parse_guest(out.replace(f"vdb {32 * 2048}", "vdb 8"), sizes, "t")


class MemoryBookkeeping(unittest.TestCase):
    def test_stable_since_finds_the_final_level(self):
        samples = [(0, 100_000), (1, 60_000), (2, 30_500), (3, 30_000), (4, 30_900)]
        self.assertEqual(memorybench.stable_since(samples), 2)
        self.assertIsNone(memorybench.stable_since([]))

    def test_settled_needs_the_quiet_time(self):
        samples = [(0, 100_000), (5, 30_000), (9, 30_200)]
        self.assertFalse(memorybench.is_settled(samples, quiet_s=5))
        self.assertTrue(memorybench.is_settled(samples + [(10, 30_100)], quiet_s=5))
        # A value still falling by more than the tolerance is not settled.
        self.assertFalse(memorybench.is_settled([(0, 9000), (10, 7000), (20, 5000)], 5))

    def test_figures_rise_and_drops(self):
        stages = {"before": {"rss_kib": 20_000, "pss_kib": 19_000},
                  "peak": {"rss_kib": 85_536, "pss_kib": 84_000},
                  "free": {"rss_kib": 36_384, "pss_kib": None},
                  "shrink": {"rss_kib": 20_000}}
        f = memorybench.figures(stages, 65_536)
        self.assertAlmostEqual(f["rise_frac"], 1.0)
        self.assertAlmostEqual(f["drop_free_frac"], 0.75)
        self.assertAlmostEqual(f["drop_shrink_frac"], 1.0)
        self.assertEqual(f["pss_before_kib"], 19_000)
        self.assertNotIn("pss_free_kib", f)
        # No peak: no fractions.
        self.assertNotIn("rise_frac", memorybench.figures({"before": {"rss_kib": 1}}, 65_536))

    def test_parse_touched(self):
        out = "GUEST-READY\r\nCHVMEM-TOUCHED 67108864 2500000000\r\n"
        self.assertEqual(memorybench.parse_touched(out), (67108864, 2.5))
        self.assertIsNone(memorybench.parse_touched("CHVMEM-TOUCHED x 1\n"))
        self.assertIsNone(memorybench.parse_touched("CHVMEM-TOUCHED 12\n"))


class DensityBookkeeping(unittest.TestCase):
    @staticmethod
    def row(ms, pss, cpu, failures=()):
        return {"vmm": "chv", "kind": "clone", "n": 1, "answered": 1 if ms else 0,
                "answer_ms": [ms] if ms else [], "answer_ms_p50": ms, "answer_ms_p99": ms,
                "answer_ms_all": ms, "clones_per_core_s": 1000 / ms / 2 if ms else None,
                "pss_mib_per_vm": pss, "pss_mib_total": pss, "cpu_ms_per_vm": cpu,
                "vcpu_ms_per_vm": cpu, "mem_available_mib_before": 100,
                "mem_available_mib_after": 90, "failures": list(failures)}

    def test_single_runs_pool_their_answers(self):
        rows = [self.row(100, 18, 140), self.row(300, 20, 160), self.row(120, 19, 150),
                self.row(None, None, None, ["vm 0: no answer within 60 s"])]
        m = densitybench.merge_runs(rows)
        self.assertEqual((m["runs"], m["answered"], m["n"]), (4, 3, 1))
        self.assertEqual(m["answer_ms"], [100, 300, 120])
        self.assertEqual(m["answer_ms_p50"], 120)
        self.assertEqual(m["answer_ms_all"], 120)
        self.assertAlmostEqual(m["pss_mib_per_vm"], 19)
        self.assertAlmostEqual(m["cpu_ms_per_vm"], 150)
        self.assertEqual(m["failures"], ["vm 0: no answer within 60 s"])
        self.assertEqual(densitybench.n_label(m), "1 ×4")
        self.assertIn("| chv | clone | 1 ×4 | 3 | 120.0 |", densitybench.table([m]))

    def test_one_run_is_its_own_row(self):
        r = self.row(100, 18, 140)
        self.assertIs(densitybench.merge_runs([r]), r)
        self.assertEqual(densitybench.n_label(r), "1")


class DensityStop(unittest.TestCase):
    """stop_all: a VMM that died by itself after its guest answered is a
    failure; one still running when stopped is not."""

    def guest(self, d, argv, answered):
        g = densitybench.Guest(0, argv, "", os.path.join(d, "0.err"), b"", False)
        g.err = open(g.err_path, "wb")
        g.proc = subprocess.Popen(argv, stderr=g.err)
        g.t_answer = 1.0 if answered else None
        return g

    def test_a_vmm_that_died_after_answering_is_reported(self):
        with tempfile.TemporaryDirectory() as d:
            g = self.guest(d, ["sh", "-c", "echo bad syscall >&2; kill -SYS $$"], True)
            g.proc.wait()
            crashed = densitybench.stop_all([g])
            self.assertEqual(len(crashed), 1)
            self.assertIn("exited with status -31 after answering", crashed[0])
            self.assertIn("bad syscall", crashed[0])

    def test_a_running_vmm_is_stopped_quietly(self):
        with tempfile.TemporaryDirectory() as d:
            g = self.guest(d, ["sleep", "60"], True)
            self.assertEqual(densitybench.stop_all([g]), [])
            self.assertEqual(g.proc.returncode, -9)

    def test_a_vmm_that_never_answered_is_left_to_the_wave(self):
        with tempfile.TemporaryDirectory() as d:
            g = self.guest(d, ["true"], False)
            g.proc.wait()
            self.assertEqual(densitybench.stop_all([g]), [])


class Initramfs(unittest.TestCase):
    def test_appended_archive_lists_the_tool(self):
        with tempfile.TemporaryDirectory() as d:
            base, tool, out = (os.path.join(d, n) for n in ("base.cpio", "tool", "out.cpio"))
            with open(tool, "wb") as f:
                f.write(b"\x7fELF" + b"x" * 5)
            with open(base, "wb") as f:
                f.write(B.newc_entry("init", 0o100755, b"#!/bin/sh\n", 1) +
                        B.newc_entry("TRAILER!!!", 0, b"", 0))
            B.bench_initramfs(base, {"/chvblk": tool}, out)
            self.assertEqual(os.path.getsize(out) % 4, 0)
            with open(out, "rb") as f:
                data = f.read()
            # cpio(1) reads the first archive; the second starts after it.
            first = subprocess.run(["cpio", "-t"], input=data, capture_output=True).stdout.split()
            self.assertEqual(first, [b"init"])
            i = data.index(b"070701", data.index(b"TRAILER!!!"))
            second = subprocess.run(["cpio", "-t"], input=data[i:], capture_output=True).stdout.split()
            self.assertEqual(second, [b"chvblk"])


if __name__ == "__main__":
    unittest.main()
