"""What an agent says about its board: names read the way each board writes them."""

from agents.facts import cpu_model, host_facts


def test_the_cpu_name_is_the_model_name_on_x86_and_the_model_line_on_a_pi(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R)\n")
    assert cpu_model(str(x86)) == "Intel(R) Xeon(R)"  # not "85", the bare model number that comes first
    pi = tmp_path / "pi"
    pi.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n")
    assert cpu_model(str(pi)) == "BCM2835"
    only = tmp_path / "pi5"
    only.write_text("processor\t: 0\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    assert cpu_model(str(only)) == "Raspberry Pi 5 Model B Rev 1.0"


def test_the_facts_carry_every_agent_dependency_and_the_board():
    facts = host_facts()
    for key in ("python", "onnxruntime", "onnxruntime_providers", "numpy", "pyzmq", "libzmq", "msgpack", "psutil",
                "kernel", "os_release", "l4t_release", "board_model", "cpu_governor"):
        assert key in facts, key
    assert facts["kernel"] and facts["numpy"].count(".") >= 1


def test_the_gpu_of_a_jetson_and_of_a_server_is_recognised(tmp_path):
    from agents.facts import gpu_kind

    assert gpu_kind(str(tmp_path)) is None
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module 550.54\n")
    assert gpu_kind(str(tmp_path)) == "nvidia"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1\n")
    assert gpu_kind(str(tmp_path)) == "jetson"


def test_providers_are_tried_in_order_less_what_onnxruntime_lacks_cpu_last():
    from agents.runtime import usable_providers

    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert usable_providers(["CUDAExecutionProvider", "TensorrtExecutionProvider"], have) == [
        "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert usable_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert usable_providers(None, have) == ["CPUExecutionProvider"]


def test_a_jetsons_power_mode_and_pinned_clocks_are_facts(tmp_path):
    import boards

    from agents.facts import board_facts

    boards.jetson_orin_power_mode(tmp_path)
    f = board_facts(str(tmp_path))
    assert f["l4t_release"].startswith("# R35 (release), REVISION: 4.1") and f["gpu"] == "jetson"
    assert f["nvpmodel"] == "pmode:0000 fmode:fanNull" and f["board_model"] == "NVIDIA Orin Nano Developer Kit"
    assert f["os_release"] == "Ubuntu 20.04.6 LTS" and f["cpu_governor"] == "schedutil"
    assert f["cpu_clocks_pinned"] is True and f["cpu_freq_max_khz"] == 1510400
    bare = board_facts(str(tmp_path / "nothing"))
    assert bare["nvpmodel"] is None and bare["cpu_clocks_pinned"] is None and bare["gpu"] is None
