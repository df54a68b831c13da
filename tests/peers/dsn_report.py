#!/usr/bin/env python3
"""Reads a delivery status notification (RFC 3464) from the file named on the command line with
Python's email package, and prints what the tests check, as one JSON object:

  content_type      the top-level type ("multipart/report")
  report_type       its report-type parameter ("delivery-status")
  parts             the content types of the top-level parts, in order
  per_message       the per-message fields of the message/delivery-status part
  recipients        one object of fields per per-recipient block
  original_headers  the header fields of the text/rfc822-headers part, or of the message of the
                    message/rfc822 part (RET=FULL)
  original_body     the body of that message/rfc822 part ("" without one)
  defects           the names of the defects the parser found, in any part
"""

import email
import email.policy
import json
import sys
from email.parser import BytesHeaderParser


def fields(message):
    return {name: str(value) for name, value in message.items()}


def main():
    with open(sys.argv[1], "rb") as f:
        report = email.message_from_binary_file(f, policy=email.policy.compat32)
    out = {
        "content_type": report.get_content_type(),
        "report_type": report.get_param("report-type"),
        "parts": [],
        "per_message": {},
        "recipients": [],
        "original_headers": {},
        "original_body": "",
        "defects": [],
    }
    for part in report.walk():
        out["defects"] += [type(defect).__name__ for defect in part.defects]
    if report.is_multipart():
        for part in report.get_payload():
            content_type = part.get_content_type()
            out["parts"].append(content_type)
            if content_type == "message/delivery-status":
                # The parser makes one header block of each group of fields.
                blocks = part.get_payload()
                if blocks:
                    out["per_message"] = fields(blocks[0])
                    out["recipients"] = [fields(block) for block in blocks[1:]]
            elif content_type == "text/rfc822-headers":
                headers = BytesHeaderParser().parsebytes(part.get_payload(decode=True))
                out["original_headers"] = fields(headers)
            elif content_type == "message/rfc822":
                returned = part.get_payload()[0]
                out["original_headers"] = fields(returned)
                out["original_body"] = returned.get_payload()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
