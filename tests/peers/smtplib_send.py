#!/usr/bin/env python3
"""Sends one message with Python's smtplib (a client nobody in this project wrote).

usage: smtplib_send.py HOST PORT FROM TO[,TO...] MESSAGE_FILE [--starttls] [--8bitmime] [--smtputf8]
                       [--mail-option=OPTION ...] [--rcpt-option=OPTION ...]

--mail-option adds a MAIL FROM parameter (RET=HDRS), --rcpt-option one to every RCPT TO
(NOTIFY=SUCCESS): smtplib's mail_options and rcpt_options.

Prints the server's final reply to DATA ("250 2.0.0 Ok: queued as ...") and the extensions the
server announced, one per line as "ext NAME". Exits 1 with the server's reply if it refuses.
"""
import smtplib
import ssl
import sys


def main():
    host, port, sender, rcpts, path = sys.argv[1:6]
    flags = set(sys.argv[6:])
    with open(path, "rb") as f:
        message = f.read()
    client = smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=30)
    client.ehlo()
    if "--starttls" in flags:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
    options = []
    if "--8bitmime" in flags:
        options.append("BODY=8BITMIME")
    if "--smtputf8" in flags:
        options.append("SMTPUTF8")
    options += [f.split("=", 1)[1] for f in sys.argv[6:] if f.startswith("--mail-option=")]
    rcpt_options = [f.split("=", 1)[1] for f in sys.argv[6:] if f.startswith("--rcpt-option=")]
    for name in sorted(client.esmtp_features):
        print("ext", name.upper())
    code, reply = client.mail(sender, options)
    if code != 250:
        print(code, reply.decode(errors="replace"))
        sys.exit(1)
    for rcpt in rcpts.split(","):
        code, reply = client.rcpt(rcpt, rcpt_options)
        if code != 250:
            print(code, reply.decode(errors="replace"))
            sys.exit(1)
    # smtplib.data() dot-stuffs and normalises line ends to CRLF itself.
    code, reply = client.data(message)
    print(code, reply.decode(errors="replace"))
    client.quit()
    sys.exit(0 if code == 250 else 1)


if __name__ == "__main__":
    main()
