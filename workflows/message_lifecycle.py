"""MessageLifecycleWorkflow: validate -> persist -> broadcast -> follow receipts."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.messages import MessageActivities
    from missive.errors import DuplicateClientMessageId, InvalidInput
    from missive.schemas import (
        Acceptance,
        AcceptInput,
        BroadcastMessageInput,
        LifecyclePhase,
        MessageAccepted,
        MessageLifecycleResult,
        MessageStatus,
        NotifyMessageInput,
        NotifyMessageResult,
        PersistMessageInput,
        PersistMessageResult,
        PlanNotificationsInput,
        PlanNotificationsResult,
        ReceiptsChanged,
        ReceiptStatus,
        RecipientState,
        SendMessageInput,
    )
    from missive.validation import (
        require_body,
        require_client_message_id,
        require_mentions,
        require_uuid,
        send_fingerprint,
    )
    from workflows import policies
    from workflows.failures import reraise_refusal
    from workflows.notify_message import NotificationAgenda


@workflow.defn
class MessageLifecycleWorkflow:
    """One message, from the sender's send to every recipient's read.

    Its id is ``message-<message id>``, derived from (sender, client_message_id),
    so a resend joins this workflow instead of making a second message.
    """

    @workflow.init
    def __init__(self, input: SendMessageInput | None = None) -> None:
        # None only for a start without input (runtime.converter.InputCheckingRunner
        # passes null); run then fails it as InvalidInput.
        self._fingerprint = send_fingerprint(input.conversation_id, input.body) if input else ""
        self._request_id = input.request_id if input else ""
        self._status = MessageStatus()
        self._accepted: MessageAccepted | None = None
        self._rejection: ApplicationError | None = None

    @workflow.run
    async def run(self, input: SendMessageInput | None = None) -> MessageLifecycleResult:
        """Runs the lifecycle; fails only with a non-retryable ApplicationError."""
        if input is None:
            # Optional only so that a start without input reaches this line (the
            # SDK builds the object with run's arguments before any of its code).
            raise ApplicationError("input: is required", type="InvalidInput", non_retryable=True)
        try:
            persisted = await self._persist(input)
        except ApplicationError as err:
            self._reject(err)
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise
        self._status.message_id = persisted.message_id
        self._status.conversation_id = persisted.conversation_id
        self._status.seq = persisted.seq
        # Merge, never reset: a receipt signal may have been handled already.
        self._status.recipient_count = max(self._status.recipient_count, persisted.recipient_count)
        self._status.per_recipient = (
            persisted.recipient_count <= input.receipt_detail_max_recipients
        )
        if not self._status.per_recipient:
            self._status.recipients = {}
        for recipient in persisted.recipient_ids:
            self._status.recipients.setdefault(recipient, RecipientState())
        self._status.phase = LifecyclePhase.PERSISTED
        self._status.created_at = persisted.created_at
        self._status.duplicate = not persisted.created
        self._accepted = MessageAccepted(
            message_id=persisted.message_id,
            conversation_id=persisted.conversation_id,
            seq=persisted.seq,
            created_at=persisted.created_at,
            duplicate=not persisted.created,
        )

        agenda: asyncio.Task[NotifyMessageResult] | None = None
        notify = input.notify is not None and persisted.recipient_count > 0
        # Plan whichever attempt stored the message: created=False in this run means an
        # attempt whose workflow task was lost committed it (a resend joins the running
        # lifecycle instead). Planning is idempotent (deterministic row ids), so it
        # writes what is missing and leaves the rest. Older runs replay as they ran.
        notify = notify and (persisted.created or workflow.patched("plan-whoever-stored"))
        if notify and workflow.patched("plan-with-broadcast"):
            # One local activity announces the message and plans its notifications.
            notify_input = _notify_input(input, persisted)
            plan_input = PlanNotificationsInput(notify_input, workflow.now())
            planned = await self._broadcast(persisted.message_id, plan_input)
            agenda = asyncio.create_task(
                NotificationAgenda().run(notify_input, planned, planned_at=plan_input.now)
            )
        else:
            await self._broadcast(persisted.message_id)
            # Runs started before notifications existed never plan them on replay.
            if notify and workflow.patched("notify-after-broadcast"):
                agenda = asyncio.create_task(
                    NotificationAgenda().run(_notify_input(input, persisted))
                )

        self._status.phase = LifecyclePhase.FOLLOWING_RECEIPTS
        try:
            await workflow.wait_condition(
                self._all_read, timeout=timedelta(seconds=input.lifecycle_window_seconds)
            )
            self._status.phase = LifecyclePhase.ALL_READ
        except TimeoutError:
            self._status.phase = LifecyclePhase.WINDOW_ELAPSED
        if agenda is not None:
            # Once everyone read, what is left of the agenda is cancelled rows: its
            # next dispatch finds nothing pending and it ends.
            try:
                await agenda
            except (ActivityError, ApplicationError) as err:
                # The message is stored and delivered; a refused notification step
                # (recorded in the log) is no reason to fail its lifecycle.
                workflow.logger.warning("notifications gave up: %s", err)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return MessageLifecycleResult(
            message_id=persisted.message_id,
            seq=persisted.seq,
            phase=self._status.phase,
            recipient_count=self._status.recipient_count,
            delivered_count=self._status.delivered_count,
            read_count=self._status.read_count,
        )

    async def _persist(self, input: SendMessageInput) -> PersistMessageResult:
        try:
            # Pure checks first: a bad request costs no activity and writes nothing.
            require_uuid(input.conversation_id, "conversation_id")
            require_uuid(input.sender_id, "sender_id")
            require_client_message_id(input.client_message_id)
            require_body(input.body, max_bytes=input.max_body_bytes)
            require_mentions(input.mentions)
        except InvalidInput as err:
            raise ApplicationError(str(err), type=err.type, non_retryable=True) from None
        try:
            return await workflow.execute_local_activity_method(
                MessageActivities.persist_message,
                PersistMessageInput(
                    conversation_id=input.conversation_id,
                    sender_id=input.sender_id,
                    client_message_id=input.client_message_id,
                    body=input.body,
                    max_body_bytes=input.max_body_bytes,
                    receipt_detail_max_recipients=input.receipt_detail_max_recipients,
                    request_id=input.request_id,
                    e2e_header=input.e2e_header,
                ),
                start_to_close_timeout=policies.DB_WRITE_TIMEOUT,
                retry_policy=policies.DB_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except ActivityError as err:
            reraise_refusal(err)

    async def _broadcast(
        self, message_id: str, plan: PlanNotificationsInput | None = None
    ) -> PlanNotificationsResult | None:
        """message:new (and, with ``plan``, the notification plan, or None if not made)."""
        try:
            return await workflow.execute_local_activity_method(
                MessageActivities.broadcast_message,
                BroadcastMessageInput(message_id=message_id, plan=plan),
                start_to_close_timeout=policies.BROADCAST_TIMEOUT,
                schedule_to_close_timeout=policies.BROADCAST_DEADLINE,
                retry_policy=policies.BROADCAST_RETRY,
                local_retry_threshold=policies.LOCAL_RETRY_THRESHOLD,
            )
        except ActivityError:
            # The message is stored and clients catch up from history; a live
            # event this late is not worth failing the lifecycle for.
            workflow.logger.warning("message:new broadcast gave up", extra={"id": message_id})
            return None

    def _reject(self, err: ApplicationError) -> None:
        self._rejection = err
        self._status.phase = LifecyclePhase.REJECTED
        self._status.error = f"{err.type}: {err.message}"

    def _all_read(self) -> bool:
        return self._status.read_count >= self._status.recipient_count

    @workflow.update
    async def accepted(self, check: AcceptInput | None = None) -> MessageAccepted:
        """Waits until the message is stored; what the sender's client is acked with.

        Fails with the rejection (a non-retryable ApplicationError naming the
        problem) when the message was refused.
        """
        await workflow.wait_condition(
            lambda: self._accepted is not None or self._rejection is not None
        )
        if self._rejection is not None:
            raise ApplicationError(
                self._rejection.message, type=self._rejection.type, non_retryable=True
            )
        assert self._accepted is not None
        return self._ack_for(check)

    def _ack_for(self, check: AcceptInput | None) -> MessageAccepted:
        assert self._accepted is not None
        if check is None or not check.request_id or check.request_id == self._request_id:
            return self._accepted
        return dataclasses.replace(self._accepted, duplicate=True)

    @accepted.validator
    def _same_message(self, check: AcceptInput | None = None) -> None:
        """Refuses (without a trace in history) a resend that is another message."""
        if check is not None and check.fingerprint and check.fingerprint != self._fingerprint:
            err = DuplicateClientMessageId(
                "this client_message_id is already used for a different message "
                "(another body or conversation); it is not overwritten"
            )
            raise ApplicationError(str(err), type=err.type, non_retryable=True)

    @workflow.query
    def acceptance(self, check: AcceptInput | None = None) -> Acceptance:
        """The ack or the refusal, also once the lifecycle has closed.

        Empty while the message is not stored yet. The same checks as the
        ``accepted`` update: another message under this id is refused.
        """
        try:
            self._same_message(check)
        except ApplicationError as err:
            return Acceptance(error_type=err.type, error_message=err.message)
        if self._rejection is not None:
            return Acceptance(
                error_type=self._rejection.type, error_message=self._rejection.message
            )
        if self._accepted is None:
            return Acceptance()
        return Acceptance(accepted=self._ack_for(check))

    @workflow.signal
    def receipts_changed(self, change: ReceiptsChanged) -> None:
        """Receipts for this message moved forward (counts only grow)."""
        status = self._status
        status.recipient_count = max(status.recipient_count, change.recipient_count)
        status.delivered_count = max(status.delivered_count, change.delivered_count)
        status.read_count = max(status.read_count, change.read_count)
        if not status.per_recipient:
            return
        if change.recipient_id is not None and change.status is not None:
            self._recipient_moved(change.recipient_id, change.status, change.at)
        for receipt in change.recipients:  # the gateway's batcher: several in one signal
            self._recipient_moved(receipt.recipient_id, receipt.status, receipt.at)

    def _recipient_moved(self, recipient_id: str, new: ReceiptStatus, at: datetime | None) -> None:
        state = self._status.recipients.setdefault(recipient_id, RecipientState())
        if new is ReceiptStatus.READ:
            state.status = "read"
            state.read_at = state.read_at or at
            state.delivered_at = state.delivered_at or at
        elif state.status == "sent":
            state.status = "delivered"
            state.delivered_at = state.delivered_at or at

    @workflow.query
    def status(self) -> MessageStatus:
        """Where the lifecycle is, with per-recipient state for small conversations."""
        return self._status


def _notify_input(input: SendMessageInput, persisted: PersistMessageResult) -> NotifyMessageInput:
    """The notification agenda's input: ids and times only, never the body."""
    assert input.notify is not None
    return NotifyMessageInput(
        message_id=persisted.message_id,
        conversation_id=persisted.conversation_id,
        sender_id=input.sender_id,
        seq=persisted.seq,
        created_at=persisted.created_at,
        mentions=list(input.mentions),
        options=input.notify,
    )
