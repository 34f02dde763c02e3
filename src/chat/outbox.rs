//! Keeps each connection's chat outputs in order while some wait for storage.
//!
//! Everything a connection causes (its replies, the events of its messages, its
//! presence, its close) is queued behind the oldest of its requests still waiting for
//! a storage answer, and released in order once that answer is in; what other
//! connections cause is not held up. A connection with nothing waiting passes straight
//! through. So a room message's event never overtakes its sender's earlier replies,
//! a `leave` after a `send` is announced after the message, and the close of a
//! connection goes out after the replies it was owed, while a database that stalls
//! holds up only the connections that are waiting for it.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{Action, Chat, ConnId, Output};
use crate::store::{Outcome, Ticket};

#[derive(Debug, Default)]
pub struct Outbox {
    /// Outputs of each connection behind a request still waiting (the first entry of
    /// every queue is an `Output::Await`).
    queues: HashMap<ConnId, VecDeque<Output>>,
    /// Which connection's queue waits for each ticket.
    owners: HashMap<Ticket, ConnId>,
    /// Answers for tickets at the head of their queue, or further back.
    answers: HashMap<Ticket, Outcome>,
    /// Answered tickets in the order the answers came: storage answers in the order it
    /// committed, and releasing in that order gives everyone messages in id order.
    woken: VecDeque<Ticket>,
    /// Answered tickets that were not at the head of their queue when their turn came:
    /// resolved as soon as the requests before them are.
    deferred: HashSet<Ticket>,
    /// Released, for the event loop to carry out in order.
    actions: Vec<Action>,
}

impl Outbox {
    /// Takes the outputs of something `origin` did (a request, joining, leaving). A
    /// close goes in the queue of the connection it closes.
    pub fn push(&mut self, origin: ConnId, outputs: &mut Vec<Output>) {
        for output in outputs.drain(..) {
            let key = match &output {
                Output::Close { conn, .. } => *conn,
                Output::Await(pending) => pending.conn,
                Output::Deliver(_) => origin,
            };
            self.push_one(key, output);
        }
    }

    fn push_one(&mut self, key: ConnId, output: Output) {
        if let Output::Await(pending) = &output {
            self.owners.insert(pending.ticket, key);
        }
        match self.queues.get_mut(&key) {
            Some(queue) => queue.push_back(output),
            None => match output {
                Output::Await(_) => {
                    self.queues.insert(key, VecDeque::from([output]));
                }
                released => self.release(released),
            },
        }
    }

    /// The storage answer for a ticket.
    pub fn answer(&mut self, ticket: Ticket, outcome: Outcome) {
        if self.owners.contains_key(&ticket) {
            self.answers.insert(ticket, outcome);
            self.woken.push_back(ticket);
        }
    }

    /// Resolves answered requests in the order their answers came, each with the
    /// outputs behind it up to the next request still waiting.
    pub fn settle(&mut self, chat: &mut Chat) {
        while let Some(ticket) = self.woken.pop_front() {
            let Some(&key) = self.owners.get(&ticket) else {
                continue;
            };
            let at_head = matches!(
                self.queues.get(&key).and_then(VecDeque::front),
                Some(Output::Await(p)) if p.ticket == ticket
            );
            if !at_head {
                self.deferred.insert(ticket);
                continue;
            }
            self.drain(key, chat);
        }
    }

    /// Resolves the answered request at the head of `key`'s queue, releases what follows
    /// it, and goes on through requests answered earlier than their turn.
    fn drain(&mut self, key: ConnId, chat: &mut Chat) {
        let mut first = true;
        while let Some(queue) = self.queues.get_mut(&key) {
            let Some(head) = queue.pop_front() else {
                self.queues.remove(&key);
                return;
            };
            let pending = match head {
                Output::Await(pending) => pending,
                released => {
                    self.release(released);
                    continue;
                }
            };
            let ready = first || self.deferred.remove(&pending.ticket);
            let outcome = match self.answers.remove(&pending.ticket) {
                Some(outcome) if ready => outcome,
                Some(outcome) => {
                    self.answers.insert(pending.ticket, outcome);
                    queue.push_front(Output::Await(pending));
                    return;
                }
                None => {
                    queue.push_front(Output::Await(pending));
                    return;
                }
            };
            first = false;
            self.owners.remove(&pending.ticket);
            let actions = chat.resolve(pending, outcome);
            self.actions.extend(actions);
        }
    }

    fn release(&mut self, output: Output) {
        match output {
            Output::Deliver(delivery) => self.actions.push(Action::Send {
                to: delivery.to,
                frame: delivery.frame,
            }),
            Output::Close { conn, close } => self.actions.push(Action::Close { conn, close }),
            // Never released: `push_one` queues it and `settle` resolves it.
            Output::Await(_) => {}
        }
    }

    /// What was released since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Requests waiting for storage.
    pub fn waiting(&self) -> usize {
        self.owners.len()
    }
}
