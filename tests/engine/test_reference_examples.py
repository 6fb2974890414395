"""The reference ApplicationEntity documentation's examples, ported and run as doctests.

Each example is the reference text with ``from pynetdicom import AE`` replaced by
``from engine._config import ApplicationEntityConfig as AE``, ``pynetdicom.sop_class``
by ``engine.sop_class`` and ``VerificationPresentationContexts`` taken from
``engine.presentation``. The reference page flattens whitespace; the line breaks and
the four-space indents of the printed contexts are restored as pynetdicom prints
them. Output is compared exactly (no doctest whitespace normalisation).

Where the reference itself is wrong it is corrected, with a comment:
``ae.reqested_contexts`` (a typo) reads ``ae.requested_contexts``, and one example uses
``ae`` without creating it, so ``ae = AE()`` is added.
"""

from __future__ import annotations

import doctest
import io

import pytest

EXAMPLES = {
    # -- add_requested_context ------------------------------------------------
    "add_requested_context: by UID string": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> ae = AE()
>>> ae.add_requested_context('1.2.840.10008.1.1')
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
""",
    "add_requested_context: by VerificationSOPClass": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_requested_context(VerificationSOPClass)
""",
    "add_requested_context: one transfer syntax": """
>>> from pydicom.uid import ImplicitVRLittleEndian
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_requested_context(VerificationSOPClass,
...                          ImplicitVRLittleEndian)
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
""",
    "add_requested_context: two contexts, same abstract syntax": """
>>> from pydicom.uid import (
...     ImplicitVRLittleEndian, ExplicitVRLittleEndian,
...     ExplicitVRBigEndian
... )
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_requested_context(VerificationSOPClass,
...                          [ImplicitVRLittleEndian,
...                           ExplicitVRBigEndian])
>>> ae.add_requested_context(VerificationSOPClass,
...                          ExplicitVRLittleEndian)
>>> len(ae.requested_contexts)
2
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Big Endian
>>> print(ae.requested_contexts[1])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Explicit VR Little Endian
""",
    # -- add_supported_context ------------------------------------------------
    "add_supported_context: by UID string": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> ae = AE()
>>> ae.add_supported_context('1.2.840.10008.1.1')
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
""",
    "add_supported_context: by VerificationSOPClass": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_supported_context(VerificationSOPClass)
""",
    "add_supported_context: one transfer syntax": """
>>> from pydicom.uid import ImplicitVRLittleEndian
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_supported_context(VerificationSOPClass,
...                          ImplicitVRLittleEndian)
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
""",
    "add_supported_context: extend an existing context": """
>>> from pydicom.uid import (
...     ImplicitVRLittleEndian, ExplicitVRLittleEndian,
...     ExplicitVRBigEndian
... )
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_supported_context(VerificationSOPClass,
...                          [ImplicitVRLittleEndian,
...                           ExplicitVRBigEndian])
>>> ae.add_supported_context(VerificationSOPClass,
...                          ExplicitVRLittleEndian)
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
""",
    "add_supported_context: role selection": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import CTImageStorage
>>> ae = AE()
>>> ae.add_supported_context(
...     CTImageStorage, scu_role=True, scp_role=True
... )
""",
    # -- remove_requested_context ---------------------------------------------
    "remove_requested_context: by UID string": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> ae = AE()
>>> ae.add_requested_context('1.2.840.10008.1.1')
>>> print(ae.requested_contexts[0])  # the reference has the typo ae.reqested_contexts
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
>>> ae.remove_requested_context('1.2.840.10008.1.1')
>>> len(ae.requested_contexts)
0
""",
    "remove_requested_context: by VerificationSOPClass": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_requested_context(VerificationSOPClass)
>>> ae.remove_requested_context(VerificationSOPClass)
>>> len(ae.requested_contexts)
0
""",
    "remove_requested_context: only matching transfer syntax": """
>>> from pydicom.uid import ImplicitVRLittleEndian
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()  # missing from the reference, which reuses an earlier ae
>>> ae.add_requested_context(VerificationSOPClass,
...                          ImplicitVRLittleEndian)
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
>>> ae.remove_requested_context(VerificationSOPClass,
...                             ImplicitVRLittleEndian)
>>> len(ae.requested_contexts)
0
""",
    "remove_requested_context: transfer syntaxes remain": """
>>> from pydicom.uid import (
...     ImplicitVRLittleEndian, ExplicitVRLittleEndian
... )
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_requested_context(VerificationSOPClass)
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
>>> ae.remove_requested_context(VerificationSOPClass,
...                             [ImplicitVRLittleEndian,
...                              ExplicitVRLittleEndian])
>>> print(ae.requested_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Explicit VR Big Endian
""",
    # -- remove_supported_context ---------------------------------------------
    "remove_supported_context: by UID string": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> ae = AE()
>>> ae.add_supported_context('1.2.840.10008.1.1')
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
>>> ae.remove_supported_context('1.2.840.10008.1.1')
>>> len(ae.supported_contexts)
0
""",
    "remove_supported_context: VerificationPresentationContexts": """
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.presentation import VerificationPresentationContexts
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.supported_contexts = VerificationPresentationContexts
>>> ae.remove_supported_context(VerificationSOPClass)
""",
    "remove_supported_context: only matching transfer syntax": """
>>> from pydicom.uid import ImplicitVRLittleEndian
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_supported_context(VerificationSOPClass,
...                          ImplicitVRLittleEndian)
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
>>> ae.remove_supported_context(VerificationSOPClass,
...                             ImplicitVRLittleEndian)
>>> len(ae.supported_contexts)
0
""",
    "remove_supported_context: transfer syntaxes remain": """
>>> from pydicom.uid import (
...     ImplicitVRLittleEndian, ExplicitVRLittleEndian
... )
>>> from engine._config import ApplicationEntityConfig as AE
>>> from engine.sop_class import VerificationSOPClass
>>> ae = AE()
>>> ae.add_supported_context(VerificationSOPClass)
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Implicit VR Little Endian
    =Explicit VR Little Endian
    =Explicit VR Big Endian
>>> ae.remove_supported_context(VerificationSOPClass,
...                             [ImplicitVRLittleEndian,
...                              ExplicitVRLittleEndian])
>>> print(ae.supported_contexts[0])
Abstract Syntax: Verification SOP Class
Transfer Syntax(es):
    =Explicit VR Big Endian
""",
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_reference_example(name: str) -> None:
    test = doctest.DocTestParser().get_doctest(EXAMPLES[name], {}, name, None, 0)
    assert test.examples, "an example with nothing to run"
    report = io.StringIO()
    runner = doctest.DocTestRunner(verbose=False, optionflags=0)
    runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def test_role_selection_example_effect() -> None:
    """The role selection example stores both roles on the supported context."""
    from engine._config import ApplicationEntityConfig as AE
    from engine.sop_class import CTImageStorage

    ae = AE()
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    (cx,) = ae.supported_contexts
    assert (cx.abstract_syntax, cx.scu_role, cx.scp_role) == (CTImageStorage, True, True)


def test_documented_defaults() -> None:
    """The defaults the reference states for each attribute."""
    from engine._config import ApplicationEntityConfig as AE

    ae = AE()
    assert ae.ae_title == b"PYNETDICOM      "  # "the AE title as length 16 bytes"
    assert ae.acse_timeout == 30
    assert ae.dimse_timeout == 30
    assert ae.network_timeout == 60
    assert ae.maximum_associations == 10
    assert ae.maximum_pdu_size == 16382
    assert ae.require_calling_aet == []
    assert ae.require_called_aet is False
    assert ae.requested_contexts == []
    assert ae.supported_contexts == []
    assert AE(ae_title=b"STORESCP").ae_title == b"STORESCP        "


def test_requested_context_limit_from_reference() -> None:
    """'ValueError - If 128 requested presentation contexts have already been added.'"""
    from engine._config import ApplicationEntityConfig as AE
    from engine.sop_class import VerificationSOPClass

    ae = AE()
    for _ in range(128):
        ae.add_requested_context(VerificationSOPClass)
    with pytest.raises(ValueError):
        ae.add_requested_context(VerificationSOPClass)
    assert len(ae.requested_contexts) == 128
