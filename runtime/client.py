"""Connecting to Temporal the same way from every process."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import temporalio.converter
from temporalio.client import Client, Interceptor
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime

from missive.config import Settings
from missive.errors import ProviderUnavailable
from runtime.codec import EncryptionCodec
from runtime.converter import StrictPayloadConverter


def data_converter(settings: Settings) -> DataConverter:
    """The converter every client and worker uses: encrypted payloads and failures.

    Values are checked against their types as they are read (StrictPayloadConverter):
    a workflow started with input of the wrong shape fails at once as InvalidInput.

    Raises:
        InvalidInput: CODEC_KEYS is not set and ALLOW_PLAINTEXT_PAYLOADS is not
            true: message bodies would reach Temporal's history in clear.
    """
    strict = dataclasses.replace(
        temporalio.converter.default(), payload_converter_class=StrictPayloadConverter
    )
    settings.require_payload_codec()
    if not settings.codec_keys:
        return strict
    return dataclasses.replace(
        strict,
        payload_codec=EncryptionCodec(
            settings.codec_keyring, current_version=settings.codec_key_version
        ),
        # Error messages and stack traces can quote user data: encode them too.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect(
    settings: Settings,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """Connects to Temporal, or raises ProviderUnavailable naming the address.

    Raises:
        ProviderUnavailable: the frontend at TEMPORAL_ADDRESS did not answer.
        InvalidInput: no CODEC_KEYS and plaintext payloads not allowed (see data_converter).
    """
    converter = data_converter(settings)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=converter,
            interceptors=interceptors,
            runtime=runtime,
        )
    except RuntimeError as err:
        reason = _reason(str(err))
        raise ProviderUnavailable(
            f"cannot reach Temporal at {settings.temporal_address}: {reason}"
        ) from None


def _reason(message: str) -> str:
    """A short reason out of the core SDK's long transport errors."""
    lowered = message.lower()
    if "connectionrefused" in lowered or "connection refused" in lowered:
        return "connection refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out"
    return message.splitlines()[0][:160]
