/*
 * Part 5's ZeRO memory calculator: plain JavaScript, served with the site, no CDN.
 *
 * It computes exactly what `clusterlab zero estimate` prints, and the browser test
 * (tests/test_zero_calculator.py) holds a few cells against the CLI:
 *
 * - the ZeRO paper's model (src/clusterlab/zero/memory.py): per-device bytes of fp16
 *   params (2 psi), fp16 grads (2 psi) and Adam states (12 psi), each divided by
 *   Nd = nodes x GPUs per node from the stage that partitions it; GB = 10^9 bytes,
 *   rounded half up (3 significant digits below 100 GB, one decimal from 100 on, and
 *   the paper's own precision where its Table 1 has the same cell);
 * - DeepSpeed's estimators (src/clusterlab/zero/estimators.py, after
 *   deepspeed/runtime/zero/stage_1_and_2.py and stage3.py): the same float operations
 *   in the same order, int() where DeepSpeed truncates; "GB" there is 2^30 bytes.
 *
 * The page renders the form (docs/part5-deepspeed.md) with the paper's Table 1 in a
 * data attribute, so the transcription lives in one place (memory.TABLE_1).
 */
(function () {
  "use strict";

  var SUFFIX = { "": 1, K: 1e3, M: 1e6, B: 1e9, G: 1e9, T: 1e12 };
  var GIB = Math.pow(2, 30);

  // "7.5e9", "7.5B", "2851M", "1T" -> an integer count (clusterlab.zero._checks.parse_count)
  function parseCount(name, text) {
    var m = /^([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)$/.exec(String(text).trim());
    if (!m) throw new Error(name + "=" + JSON.stringify(text) + " is not a count; write it like 7.5e9, 7.5B, 2851M or 1T");
    var value = parseFloat(m[1]) * SUFFIX[m[2].toUpperCase()];
    if (!Number.isInteger(value)) throw new Error(name + "=" + JSON.stringify(text) + " is not a whole number of items");
    if (value < 1) throw new Error(name + "=" + value + " must be at least 1");
    return value;
  }

  // value rounded half up to `decimals` digits, from its shortest decimal spelling (memory.round_half_up)
  function roundHalfUp(value, decimals) {
    var text = String(value);
    if (/e/i.test(text)) return value.toFixed(decimals);
    var neg = text.charAt(0) === "-";
    if (neg) text = text.slice(1);
    var parts = text.split(".");
    var frac = (parts[1] || "") + "0".repeat(decimals + 1);
    var digits = parts[0] + frac.slice(0, decimals);
    var up = frac.charAt(decimals) >= "5";
    var n = BigInt(digits) + (up ? 1n : 0n);
    var s = n.toString().padStart(decimals + 1, "0");
    var out = decimals ? s.slice(0, s.length - decimals) + "." + s.slice(s.length - decimals) : s;
    return (neg ? "-" : "") + out;
  }

  // memory.format_gb
  function formatGb(nbytes, decimals) {
    var gb = nbytes / 1e9;
    if (decimals === undefined || decimals === null) {
      decimals = gb >= 100 ? 1 : gb > 0 ? Math.max(0, 2 - Math.floor(Math.log10(gb))) : 0;
    }
    var text = roundHalfUp(gb, decimals);
    return text.slice(-2) === ".0" ? text.slice(0, -2) : text;
  }

  // Python's f"{x:.2f}": correctly rounded, ties to even
  function fixed2(x) {
    var s = x * 100;
    if (s / 100 === x && Number.isInteger(s * 2) && !Number.isInteger(s)) {
      var low = Math.floor(s);
      return ((low % 2 === 0 ? low : low + 1) / 100).toFixed(2);
    }
    return x.toFixed(2);
  }

  function pad(text, width) {
    return " ".repeat(Math.max(0, width - text.length)) + text;
  }

  // one estimator row as DeepSpeed prints it: " {cpu:7.2f}GB | {gpu:6.2f}GB | options"
  function row(cpu, gpu, options) {
    return " " + pad(fixed2(cpu / GIB), 7) + "GB | " + pad(fixed2(gpu / GIB), 6) + "GB | " + options;
  }

  function zero2(tp, g, n, cpuOffload, f) {
    var totalGpus = n * g, cpu, gpu;
    if (cpuOffload) {
      gpu = 2 * tp;
      cpu = tp * Math.max(4 * totalGpus, 16) * f;
    } else {
      gpu = 2 * tp + Math.trunc(18 * tp / totalGpus);
      cpu = tp * 4 * g * f;
    }
    return [Math.trunc(cpu), Math.trunc(gpu)];
  }

  function zero3(tp, ll, g, n, cpuOffload, cpuOffloadParams, zeroInit, f) {
    var totalGpus = n * g, gpusFactor = 1 / n, largest = 4 * ll, cpu, gpu;
    if (cpuOffload) {
      if (cpuOffloadParams) {
        gpu = largest;
        cpu = zeroInit ? tp * 18 * gpusFactor * f : tp * Math.max(4 * g, 18 * gpusFactor) * f;
      } else {
        gpu = largest + Math.trunc(2 * tp / totalGpus);
        cpu = zeroInit ? tp * 16 * gpusFactor * f : tp * Math.max(4 * g, 16 * gpusFactor) * f;
      }
    } else {
      gpu = largest + Math.trunc(18 * tp / totalGpus);
      cpu = zeroInit ? ll * 4 * g * f : tp * 4 * g * f;
    }
    return [Math.trunc(cpu), Math.trunc(gpu)];
  }

  function device(offloaded) {
    return offloaded ? "cpu " : "none";
  }

  function calculate(form, table1) {
    var v = function (name) { return form.querySelector("[name=" + name + "]").value; };
    var psi = parseCount("params", v("params"));
    var nodes = parseCount("nodes", v("nodes"));
    var gpus = parseCount("gpus", v("gpus"));
    var stage = parseInt(v("stage"), 10);
    var offload = v("offload");
    var zeroInit = form.querySelector("[name=zero_init]").checked;
    var memText = v("memory").trim();
    var memGb = memText === "" ? null : Number(memText);
    if (memGb !== null && !(memGb > 0)) throw new Error("device memory=" + JSON.stringify(memText) + " must be a number of GB above 0");
    var nd = nodes * gpus;

    // the paper's model
    var p = stage >= 3 ? 2 * psi / nd : 2 * psi;
    var gr = stage >= 2 ? 2 * psi / nd : 2 * psi;
    var os = stage >= 1 ? 12 * psi / nd : 12 * psi;
    var total = p + gr + os;
    var cell = table1[String(psi)] && table1[String(psi)][String(stage === 0 ? 1 : nd)];
    var paperText = cell ? cell[stage === 0 ? 0 : stage - 1] : null;
    var decimals = paperText === null ? null : (paperText.split(".")[1] || "").length;
    var out = {
      nd: String(nd),
      params: formatGb(p), grads: formatGb(gr), optim: formatGb(os), total: formatGb(total, decimals),
      table1: paperText === null ? "" : "Table 1 of the paper prints " + paperText + " GB for this cell.",
      fits: memGb === null ? "" : (total <= memGb * 1e9 ? "fits" : "does not fit") + " in " + memGb + " GB (model states only).",
    };

    // DeepSpeed's estimator for the same stage and offload
    if (stage === 0) {
      out.ds = "DeepSpeed has no estimator for stage 0 (plain data parallelism).";
    } else if (stage < 3) {
      var r2 = zero2(psi, gpus, nodes, offload !== "none", 1.5);
      out.ds = row(r2[0], r2[1], "offload_optimizer=" + device(offload !== "none"));
      out.dsGpu = r2[1];
    } else {
      var ll = parseCount("largest layer", v("largest"));
      var r3 = zero3(psi, ll, gpus, nodes, offload !== "none", offload === "params", zeroInit, 1.5);
      out.ds = row(r3[0], r3[1], "offload_param=" + device(offload === "params") + ", offload_optimizer=" +
        device(offload !== "none") + ", zero_init=" + (zeroInit ? 1 : 0));
      out.dsGpu = r3[1];
    }
    if (stage === 1 || stage === 2) out.dsNote = "(DeepSpeed's ZeRO-2 estimator; it has none of its own for stage 1)";
    if (offload === "params" && stage !== 3) out.dsNote = "(parameters are offloaded only at stage 3; this row offloads the optimizer)";
    if (memGb !== null && out.dsGpu !== undefined) {
      out.dsFits = "DeepSpeed's per-GPU estimate " + (out.dsGpu <= memGb * 1e9 ? "fits" : "does not fit") + " in " + memGb + " GB";
    }
    return out;
  }

  function render(form) {
    var table1 = JSON.parse(form.getAttribute("data-table1") || "{}");
    var box = form.querySelector(".zc-out");
    var set = function (id, text) { var el = box.querySelector("[data-out=" + id + "]"); if (el) el.textContent = text || ""; };
    var stage = form.querySelector("[name=stage]").value;
    form.querySelector(".zc-largest").hidden = stage !== "3";
    try {
      var r = calculate(form, table1);
      ["nd", "params", "grads", "optim", "total", "table1", "fits", "ds", "dsNote", "dsFits"].forEach(function (k) { set(k, r[k]); });
      set("error", "");
    } catch (e) {
      set("error", e.message);
    }
  }

  function init() {
    document.querySelectorAll("form.zero-calculator").forEach(function (form) {
      if (form.dataset.ready) return;
      form.dataset.ready = "1";
      form.addEventListener("input", function () { render(form); });
      form.addEventListener("change", function () { render(form); });
      form.addEventListener("submit", function (e) { e.preventDefault(); render(form); });
      render(form);
    });
  }

  // Material's instant navigation swaps pages without a reload: document$ tells us when
  if (window.document$ && window.document$.subscribe) window.document$.subscribe(init);
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();

  window.clusterlabZero = { parseCount: parseCount, roundHalfUp: roundHalfUp, formatGb: formatGb, zero2: zero2, zero3: zero3, row: row };
})();
