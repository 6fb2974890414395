"""``pynetdicom._config`` for the compatibility run: the module-level switches pynetdicom
3.x tests import. The engine takes configuration as objects, never module globals
(STYLE.md), so these values are read by nothing."""

LOG_HANDLER_LEVEL = "standard"
ENFORCE_UID_CONFORMANCE = False
USE_SHORT_DIMSE_AET = True
LOG_RESPONSE_IDENTIFIERS = True
LOG_REQUEST_IDENTIFIERS = True
STORE_SEND_CHUNKED_DATASET = False
STORE_RECV_CHUNKED_DATASET = False
DEFAULT_MAX_LENGTH = 16382
