# Sourced by bench/ec2.sh and bench/expose.sh: a scratch folder, moto's server and the
# fault proxy (adding DELAY_MS to every EC2 call) on free 127.0.0.1 ports, stopped by PID
# on exit, spot's AWS settings pointed at the proxy, and helpers to count calls.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

moto_port=$(free_port)
MOTO_AMIS_PATH=tests/fixtures/ec2/amis.json python3 -m moto.server -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$moto_port"
proxy_port=$(free_port)
python3 tests/support/faultproxy.py --port "$proxy_port" --upstream "http://127.0.0.1:$moto_port" --delay-ms "$DELAY_MS" >/dev/null 2>&1 &
pids+=($!)
wait_port "$proxy_port"

export AWS_ENDPOINT_URL="http://127.0.0.1:$proxy_port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_REGION=us-east-1

# The proxy's EC2 call counts by operation, now.
stats() { curl -s "http://127.0.0.1:$proxy_port/__stats"; }
ms() { echo $(($(date +%s%N) / 1000000)); }
# "<total> <operation>=<count> ..." between two `stats`.
diff_calls() { python3 -c '
import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2])
d={k: b[k]-a.get(k,0) for k in b if b[k]-a.get(k,0)}
print(sum(d.values()), " ".join(f"{k}={v}" for k,v in sorted(d.items())))' "$1" "$2"; }
