"""``pynetdicom.pdu_primitives`` for the compatibility run.

The engine has no primitive objects: its state machine takes PDUs and events
(engine._fsm). These names exist so that test modules importing them load; a test that
builds one fails with NotImplementedError, which the expectation list records as a
pynetdicom internal.
"""

__all__ = ["A_ASSOCIATE", "A_RELEASE", "A_ABORT", "A_P_ABORT", "P_DATA"]


class _Unsupported:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            f"pynetdicom.pdu_primitives.{type(self).__name__} is a pynetdicom internal; "
            "the engine has no primitive objects"
        )


class A_ASSOCIATE(_Unsupported):
    pass


class A_RELEASE(_Unsupported):
    pass


class A_ABORT(_Unsupported):
    pass


class A_P_ABORT(_Unsupported):
    pass


class P_DATA(_Unsupported):
    pass
