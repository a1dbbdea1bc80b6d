"""Where training runs: CPU, one GPU, several GPUs (MirroredStrategy) or several workers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from edgecnn.errors import EdgeCNNError

DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclass
class DeviceSetup:
    strategy: object
    precision: str
    device: str  # what actually runs: cpu | gpu
    replicas: int
    description: str


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) without its bfloat16 instructions
ISA_WITHOUT_BFLOAT16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_off(env=os.environ) -> str | None:
    """``TF_ENABLE_ONEDNN_OPTS=0`` (or ``false``) as set, when it turns TensorFlow's oneDNN CPU kernels off for
    Eigen's; None otherwise."""
    value = env.get("TF_ENABLE_ONEDNN_OPTS", "").strip()
    return f"TF_ENABLE_ONEDNN_OPTS={value}" if value.lower() in ("0", "false") else None


def onednn_warning(env=os.environ) -> str | None:
    """A line for training on an x86 CPU with oneDNN turned off (None when it is on; elsewhere, as on ARM,
    TensorFlow's default may be off and the speeds below were not measured)."""
    import platform

    if (setting := onednn_off(env)) and platform.machine().lower() in ("x86_64", "amd64"):
        return (f"{setting} turns TensorFlow's oneDNN kernels off: training on the CPU ran at 0.47-0.58x the "
                "speed with it unset (docs/train_speed.md)")
    return None


def bfloat16_off(env=os.environ) -> str | None:
    """The setting that keeps TensorFlow from the CPU's bfloat16 instructions: its oneDNN kernels turned
    off (``TF_ENABLE_ONEDNN_OPTS=0``) or capped below them (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``, ...);
    None when nothing does."""
    if setting := onednn_off(env):
        return setting
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if env.get(var, "").strip().upper() in ISA_WITHOUT_BFLOAT16:
            return f"{var}={env[var].strip()}"
    return None


# x86 int8 dot-product instructions (VNNI). Without them ONNX Runtime's default uint8 x int8 kernels sum pairs of
# products in int16, which saturates (edgecnn.runners.onnx.PRECISE_INT8).
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """The CPU's model name, its native bfloat16 instructions (AVX512-BF16, AMX; from Linux /proc/cpuinfo,
    elsewhere Python's platform name and an empty list) and the setting, if any, that keeps TensorFlow
    from them (``bfloat16_off``). With them, ``--precision mixed_bfloat16`` runs convolutions faster on
    the CPU; without, TensorFlow emulates bfloat16, slower than float32 (docs/train_speed.md).
    ``int8_dot``: its VNNI instructions; ``int8_saturates``: an x86 CPU without them (None where
    /proc/cpuinfo is not there to say). ``vendor``: GenuineIntel, AuthenticAMD, or "" where not known."""
    import platform

    name, flags, vendor = platform.processor() or platform.machine(), [], ""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("vendor_id"):
                    vendor = ln.split(":", 1)[1].strip()
                elif ln.startswith("model name"):
                    name = ln.split(":", 1)[1].strip()
                elif ln.startswith("flags"):
                    flags = ln.split(":", 1)[1].split()
                    break  # the first processor's flags follow its model name
    except OSError:
        pass
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    vnni = [f for f in INT8_DOT if f in flags]
    return {"name": name, "vendor": vendor, "bfloat16": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
            "bfloat16_off": bfloat16_off(), "int8_dot": vnni,
            "int8_saturates": (x86 and not vnni) if flags else None}


def nvidia_gpus(root: str = "/proc/driver/nvidia") -> list[dict]:
    """[{"name", "driver"}] of the NVIDIA GPUs the driver lists (Linux /proc; [] without the driver)."""
    from pathlib import Path

    base = Path(root)
    try:
        first = (base / "version").read_text().splitlines()[:1]  # "NVRM version: NVIDIA UNIX ... 580.159.04 ..."
        driver = next((w for w in " ".join(first).split() if w[:1].isdigit() and "." in w), "?")
        infos = sorted((base / "gpus").glob("*/information"))
    except OSError:
        return []
    out = []
    for info in infos:
        try:
            fields = dict(ln.split(":", 1) for ln in info.read_text().splitlines() if ":" in ln)
        except OSError:
            continue
        out.append({"name": fields.get("Model", "?").strip(), "driver": driver})
    return out


def native_bfloat16(cpu: dict) -> bool:
    """Whether TensorFlow trains on this CPU's own bfloat16 instructions: it has them (AVX512-BF16, AMX) and
    oneDNN is neither off nor capped below them (``cpu`` as from :func:`cpu_info`)."""
    return bool(cpu["bfloat16"]) and not cpu["bfloat16_off"]


def bfloat16_pays(cpu: dict) -> bool:
    """Whether mixed_bfloat16 trains faster than float32 on this CPU, as measured (docs/train_speed.md): with
    native bfloat16 in AMX (an Intel Xeon: 1.46x and 1.50x float32's speed for resnet8 and the cifar10 net)
    or on an AMD CPU (an EPYC's AVX512-BF16: 1.34x and 1.21x), not with an Intel CPU's AVX512-BF16 alone (a
    Xeon whose AMX its hypervisor hid: 0.75-0.78x and 0.71-0.99x, two runs)."""
    return native_bfloat16(cpu) and ("amx_bf16" in cpu["bfloat16"] or cpu.get("vendor") == "AuthenticAMD")


def precision_warning(precision: str, device: str, cpu: dict) -> str | None:
    """A line for training with mixed_float16 on the CPU, or with mixed_bfloat16 on a CPU whose native
    bfloat16 TensorFlow will not use or where it trained slower than float32 (``cpu`` as from
    :func:`cpu_info`); None otherwise."""
    if device != "cpu":
        return None
    if precision == "mixed_float16":  # even with AVX512-FP16 (docs/train_speed.md: the filter gradient's kernels)
        return ("mixed_float16 on the CPU: TensorFlow computes float16 convolution gradients there without "
                "fast kernels, and the cifar10 net and resnet8 trained at 0.01x float32's speed "
                "(docs/train_speed.md); --precision auto takes float32 or mixed_bfloat16 on a CPU")
    if precision != "mixed_bfloat16" or bfloat16_pays(cpu):
        return None
    if native_bfloat16(cpu):
        return ("mixed_bfloat16 on AVX512-BF16 without AMX on a CPU not known to gain from it: an Intel Xeon so "
                "trained at 0.71-0.99x float32's speed (docs/train_speed.md); --precision auto takes float32 here")
    why = (f"with this CPU's bfloat16 instructions unused ({cpu['bfloat16_off']})" if cpu["bfloat16"] else
           "on a CPU without native bfloat16 (AVX512-BF16 or AMX; `edgecnn doctor` lists them)")
    how = ("in its Eigen kernels" if str(cpu["bfloat16_off"]).startswith("TF_ENABLE_ONEDNN_OPTS=")
           else "(with AVX-512 it trained at 0.45-0.51x float32's speed, docs/train_speed.md)")
    return f"mixed_bfloat16 {why}: TensorFlow emulates it {how}"


def _gpu_supports_fp16(gpus) -> bool:
    from edgecnn._tf import tf

    for gpu in gpus:
        try:
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except Exception:
            cc = None
        if not cc or cc[0] < 7:  # tensor cores from Volta (7.0) on
            return False
    return bool(gpus)


def auto_precision(gpus, cpu: dict | None = None) -> str:
    """What ``--precision auto`` trains in: mixed_float16 on GPUs with tensor cores, mixed_bfloat16 on a CPU
    whose native bfloat16 TensorFlow uses and where it trained faster (:func:`bfloat16_pays`), float32
    otherwise (``cpu`` as from :func:`cpu_info`, read when not given)."""
    if gpus:
        return "mixed_float16" if _gpu_supports_fp16(gpus) else "float32"
    cpu = cpu_info() if cpu is None else cpu
    return "mixed_bfloat16" if bfloat16_pays(cpu) else "float32"


def setup(device: str = "auto", precision: str = "auto", cpu_replicas: int = 1) -> DeviceSetup:
    """Configure TensorFlow for ``device`` and pick a distribution strategy and precision.

    ``cpu_replicas > 1`` splits the CPU into that many logical devices and mirrors over
    them: the multi-GPU code path, exercised where no GPU exists. Must run before
    TensorFlow initialises its devices (i.e. first in the process).
    """
    if device not in DEVICES:
        raise EdgeCNNError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise EdgeCNNError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from edgecnn._tf import tf

    gpus = tf.config.list_physical_devices("GPU")
    try:
        if device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
            gpus = []
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if cpu_replicas > 1 and not gpus:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    except RuntimeError as exc:  # devices already initialised in this process
        if cpu_replicas > 1 and len(tf.config.list_logical_devices("CPU")) < cpu_replicas:
            raise EdgeCNNError(f"cannot split the CPU into {cpu_replicas} devices now: {exc}") from None
    if device == "gpu" and not gpus:
        raise EdgeCNNError("--device gpu: TensorFlow sees no GPU (run `edgecnn doctor` to see why)")

    if precision == "auto":
        precision = auto_precision(gpus)

    if os.environ.get("TF_CONFIG"):
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError:
            raise EdgeCNNError("TF_CONFIG is set but is not valid JSON") from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        desc = f"MultiWorkerMirroredStrategy ({strategy.num_replicas_in_sync} replicas)"
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        desc = f"MirroredStrategy over {len(gpus)} GPUs"
    elif gpus:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
        desc = "1 GPU"
    elif cpu_replicas > 1:
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        strategy = tf.distribute.MirroredStrategy(devices=cpus)
        desc = f"MirroredStrategy over {len(cpus)} logical CPU devices"
    else:
        strategy = tf.distribute.get_strategy()
        desc = "CPU"
    return DeviceSetup(strategy, precision, "gpu" if gpus else "cpu", strategy.num_replicas_in_sync,
                       f"{desc}, {precision}")


def cpu_counters() -> tuple[int, int] | None:
    """(steal, total) CPU time of the whole machine in clock ticks, from Linux /proc/stat; None elsewhere.

    Steal is time the hypervisor gave this virtual machine's CPUs to someone else: on a shared
    machine it is why the same epoch takes 40 s once and 80 s the next.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percentage of CPU time stolen between two cpu_counters() readings (None if unknown)."""
    if not before or not after or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)
