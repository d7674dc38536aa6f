"""The demo load: sample_files/ into the local Heap stand-in, through the installed console script."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The stand-in is a development package of this checkout (heap_standin/), not part of the installed connector.
sys.path.insert(0, str(ROOT))

from heap_standin import HeapStandin  # noqa: E402

SAMPLES = ROOT / "sample_files"
CONNECTOR = str(Path(sys.executable).parent / "destination-heap-analytics")
# Each of Heap's five APIs: its sample config, the sample input, and what the stand-in holds once it is loaded
LOADS = [
    ("track", "config_track.json", "messages.jsonl", "events"),
    ("add_user_properties", "config_user_properties.json", "messages.jsonl", "users"),
    ("add_account_properties", "config_account_properties.json", "messages.jsonl", "accounts"),
    ("identify", "config_identify.json", "messages_identify.jsonl", "identifies"),
    ("delete_users", "config_delete_users.json", "messages.jsonl", "deleted_users"),
]


def run_connector(*args: str, stdin: bytes = b"") -> list[dict]:
    finished = subprocess.run([CONNECTOR, *args], input=stdin, capture_output=True, check=False)
    messages = [json.loads(line) for line in finished.stdout.splitlines() if line.strip()]
    if finished.returncode != 0:
        sys.exit(f"connector exited {finished.returncode}:\n{finished.stdout.decode()}{finished.stderr.decode()}")
    return messages


def main() -> None:
    with HeapStandin() as heap, tempfile.TemporaryDirectory() as scratch:
        print(f"Local Heap stand-in at {heap.url}\n")
        for api_type, config_name, input_name, received in LOADS:
            config = json.loads((SAMPLES / config_name).read_text()) | {"base_url": heap.url}
            config_path = Path(scratch) / config_name
            config_path.write_text(json.dumps(config))
            status = run_connector("check", "--config", str(config_path))[-1]["connectionStatus"]["status"]
            messages = run_connector(
                "write", "--config", str(config_path), "--catalog", str(SAMPLES / "configured_catalog.json"),
                stdin=(SAMPLES / input_name).read_bytes(),
            )
            logs = [m["log"]["message"] for m in messages if m["type"] == "LOG"]
            summary = next(line for line in logs if line.startswith("Sync summary"))
            items = getattr(heap, received)
            print(f"== {api_type}: check {status}; {summary}")
            print(f"   Heap now holds {len(items)} {received}; the first one:")
            print("   " + json.dumps(items[0], indent=2).replace("\n", "\n   ") + "\n")


if __name__ == "__main__":
    main()
