"""EditMessageWorkflow: a message's sender changes its text."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.conversations import ConversationActivities
    from missive.constants import EVENT_MESSAGE_EDITED
    from missive.schemas import EditMessageInput, EditMessageResult, EditNotice
    from workflows.steps import announce_locally, write_locally


@workflow.defn
class EditMessageWorkflow:
    """One edit: store the new text (re-encrypted; the indexer re-indexes it), then
    tell the conversation (``message:edited``).

    Its id names the message and the new text (``message-edit-<id>-<digest>``), so
    a resend joins it. Notifications still pending load the message when they are
    sent, so they show the current text. An edit that adds a mention notifies
    nobody new (as in Mattermost): the README says why.
    """

    @workflow.run
    async def run(self, input: EditMessageInput) -> EditMessageResult:
        """Stores the edit and announces it; the same text again only re-announces.

        A message:edited that cannot go out within the broadcast deadline is given
        up: the edit is stored, and clients that missed the event see it by sync.
        """
        result = await write_locally(ConversationActivities.edit_message, input)
        await announce_locally(
            ConversationActivities.announce_edit,
            EditNotice(edit=input, result=result),
            event=EVENT_MESSAGE_EDITED,
        )
        return result
