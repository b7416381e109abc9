#!/bin/sh
# sshd's AuthorizedKeysCommand in the test VM image (scripts/vm-image.sh), playing the
# part of Ubuntu's ec2-instance-connect package: prints the keys EC2 Instance Connect
# pushed for user $1 within the last 60 seconds, read from the instance metadata service
# with an IMDSv2 session token. Any failure prints nothing: no key, no login.
user=$1
case $user in '' | *[!a-z0-9_.-]*) exit 0 ;; esac
imds=http://169.254.169.254
token=$(curl -fsS --max-time 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$imds/latest/api/token") || exit 0
curl -fsS --max-time 2 -H "X-aws-ec2-metadata-token: $token" \
  "$imds/latest/meta-data/managed-ssh-keys/active-keys/$user/" 2>/dev/null |
  grep -E '^(ssh-ed25519|ssh-rsa|ecdsa-sha2-[a-z0-9]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( |$)'
exit 0
