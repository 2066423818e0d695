"""Host keys: unknown hosts refused with their fingerprint, recorded only when asked; fingerprints as OpenSSH prints."""

import subprocess

import paramiko
import pytest

from testbed.core.errors import DeployError
from testbed.devices.ssh import SshTarget, UnknownHostPolicy, add_known_host, fingerprint, known_hosts_line


@pytest.fixture(scope="module")
def host_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "host_rsa"
    key = paramiko.RSAKey.generate(1024)
    key.write_private_key_file(str(path))
    (path.with_suffix(".pub")).write_text(f"{key.get_name()} {key.get_base64()} test\n")
    return key, path


def test_fingerprint_is_the_one_ssh_keygen_prints(host_key):
    key, path = host_key
    done = subprocess.run(["ssh-keygen", "-lf", str(path.with_suffix(".pub"))], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"ssh-keygen is not usable here: {done.stderr}")
    assert done.stdout.split()[1] == fingerprint(key)


def test_unknown_host_is_refused_with_fingerprint_and_the_way_to_trust_it(host_key, tmp_path):
    key, _ = host_key
    kh = tmp_path / "known_hosts"
    target = SshTarget("edge-1", "10.0.0.7", 2222, "pi", None, str(kh))
    policy = UnknownHostPolicy(target, trust_new=False)
    with pytest.raises(DeployError) as e:
        policy.missing_host_key(paramiko.SSHClient(), "[10.0.0.7]:2222", key)
    msg = str(e.value)
    assert "edge-1" in msg and "[10.0.0.7]:2222" in msg and fingerprint(key) in msg
    assert "--trust-new-hosts" in msg and "ssh-keyscan -p 2222 10.0.0.7" in msg
    assert not kh.exists()  # refusing writes nothing


def test_trusting_a_new_host_records_it_so_the_next_connection_knows_it(host_key, tmp_path):
    key, _ = host_key
    kh = tmp_path / "ssh" / "known_hosts"
    target = SshTarget("edge-1", "10.0.0.7", 2222, None, None, str(kh))
    client = paramiko.SSHClient()
    policy = UnknownHostPolicy(target, trust_new=True)
    policy.missing_host_key(client, "[10.0.0.7]:2222", key)
    assert policy.recorded == fingerprint(key)
    assert kh.read_text() == known_hosts_line("[10.0.0.7]:2222", key)
    assert oct(kh.stat().st_mode & 0o777) == "0o600"
    loaded = paramiko.HostKeys(str(kh))
    assert loaded.lookup("[10.0.0.7]:2222")[key.get_name()] == key
    # port 22 hosts are named bare, as OpenSSH does
    add_known_host(kh, SshTarget("m", "10.0.0.8").host_key_name, key)
    assert paramiko.HostKeys(str(kh)).lookup("10.0.0.8") is not None
