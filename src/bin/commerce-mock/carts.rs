//! Carts and the static product catalog (part of the mock's state, split out of
//! `state.rs` to keep files short). Owns cart ids, line items, the per-user cart that
//! persists across logins, and the guest-to-shopper cart carry-over.
//!
//! Never touches tokens or sessions: `state.rs` decides which cart a session uses.

use std::collections::HashMap;

/// One product of the static catalog.
pub struct Product {
    /// Digital River product id.
    pub id: u64,
    /// Name shown in carts and the product list.
    pub display_name: &'static str,
    /// List price in US cents (the catalog's one currency is USD).
    pub cents: u64,
}

/// The four products every test can rely on.
pub const CATALOG: [Product; 4] = [
    Product { id: 5104501700, display_name: "Widget Pro", cents: 4999 },
    Product { id: 5104501800, display_name: "Widget Lite", cents: 1999 },
    Product { id: 5104501900, display_name: "Gadget Max", cents: 9900 },
    Product { id: 5104502000, display_name: "Gizmo Cable", cents: 995 },
];

/// The catalog's currency (ISO 4217).
pub const CURRENCY: &str = "USD";

/// `cents` as the API formats a USD amount: `$1,234.50`.
pub fn formatted(cents: u64) -> String {
    let dollars = (cents / 100).to_string();
    let mut grouped = String::with_capacity(dollars.len() + dollars.len() / 3);
    for (index, digit) in dollars.chars().enumerate() {
        if index > 0 && (dollars.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("${grouped}.{:02}", cents % 100)
}

/// Looks a product up by id.
pub fn product(id: u64) -> Option<&'static Product> {
    CATALOG.iter().find(|product| product.id == id)
}

/// One line of a cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineItem {
    /// Line item id, unique across all carts.
    pub id: u64,
    /// Catalog product id.
    pub product_id: u64,
    /// How many; at least 1.
    pub quantity: u64,
}

/// A cart as handlers see it (a copy taken under the state lock).
#[derive(Clone, Debug)]
pub struct Cart {
    /// Cart id.
    pub id: u64,
    /// The shopper who owns it, `None` for a guest cart.
    pub user: Option<String>,
    /// Lines in the order they were first added.
    pub line_items: Vec<LineItem>,
}

impl Cart {
    /// Total quantity over all lines (DR's `totalItemsInCart`).
    pub fn total_items(&self) -> u64 {
        self.line_items.iter().fold(0u64, |total, item| total.saturating_add(item.quantity))
    }

    /// Sum of the lines' prices times quantities, in cents (no tax, discount or shipping:
    /// the mock's subtotal is its order total).
    pub fn subtotal_cents(&self) -> u64 {
        self.line_items.iter().fold(0u64, |total, item| total.saturating_add(item.price_cents()))
    }
}

impl LineItem {
    /// The catalog price times the quantity, in cents.
    pub fn price_cents(&self) -> u64 {
        product(self.product_id).map_or(0, |product| product.cents.saturating_mul(self.quantity))
    }
}

/// Why adding to a cart failed.
#[derive(Debug, PartialEq, Eq)]
pub enum CartError {
    /// The product id is not in the catalog.
    UnknownProduct,
    /// The cart id does not exist (a revoked or transitioned guest's cart).
    NoSuchCart,
}

/// Every cart, plus which cart belongs to which user.
pub struct Carts {
    carts: HashMap<u64, Cart>,
    by_user: HashMap<String, u64>,
    next_cart_id: u64,
    next_line_item_id: u64,
}

impl Default for Carts {
    fn default() -> Self {
        // Realistic-looking starting ids, taken from DR's documented examples.
        Carts {
            carts: HashMap::new(),
            by_user: HashMap::new(),
            next_cart_id: 47_278_010_023,
            next_line_item_id: 16_766_273_610,
        }
    }
}

impl Carts {
    /// Creates an empty cart, recording it as the user's cart when there is a user.
    pub fn create(&mut self, user: Option<&str>) -> u64 {
        let id = self.next_cart_id;
        self.next_cart_id += 1;
        let cart = Cart { id, user: user.map(str::to_owned), line_items: Vec::new() };
        self.carts.insert(id, cart);
        if let Some(user) = user {
            self.by_user.insert(user.to_owned(), id);
        }
        id
    }

    /// A copy of a cart.
    pub fn get(&self, id: u64) -> Option<Cart> {
        self.carts.get(&id).cloned()
    }

    /// The cart a user owns, which persists across that user's logins.
    pub fn user_cart(&self, user: &str) -> Option<u64> {
        self.by_user.get(user).copied()
    }

    /// Adds `quantity` of a product, merging with an existing line of the same product.
    pub fn add(&mut self, cart_id: u64, product_id: u64, quantity: u64) -> Result<(), CartError> {
        if product(product_id).is_none() {
            return Err(CartError::UnknownProduct);
        }
        let next_id = &mut self.next_line_item_id;
        let cart = self.carts.get_mut(&cart_id).ok_or(CartError::NoSuchCart)?;
        add_line(cart, next_id, product_id, quantity);
        Ok(())
    }

    /// Moves a guest cart to a user at login and returns the cart the shopper now has.
    /// The guest's lines merge into the user's own cart when there is one (the guest cart
    /// is then deleted); otherwise the guest cart itself becomes the user's cart, keeping
    /// its id, as Digital River's session transition does.
    pub fn carry_over(&mut self, guest_cart: Option<u64>, user: &str) -> Option<u64> {
        let user_cart = self.user_cart(user);
        let Some(guest_id) = guest_cart.filter(|id| Some(*id) != user_cart) else {
            return user_cart;
        };
        let Some(guest) = self.carts.remove(&guest_id) else {
            return user_cart;
        };
        match user_cart.and_then(|id| self.carts.get_mut(&id)) {
            Some(owned) => {
                for item in guest.line_items {
                    add_line(owned, &mut self.next_line_item_id, item.product_id, item.quantity);
                }
                user_cart
            }
            None => {
                let adopted = Cart { user: Some(user.to_owned()), ..guest };
                self.carts.insert(guest_id, adopted);
                self.by_user.insert(user.to_owned(), guest_id);
                Some(guest_id)
            }
        }
    }

    /// `(cart id, owner, total items)` for every cart, ordered by id.
    pub fn summary(&self) -> Vec<(u64, Option<String>, u64)> {
        let mut rows: Vec<_> =
            self.carts.values().map(|cart| (cart.id, cart.user.clone(), cart.total_items())).collect();
        rows.sort_by_key(|row| row.0);
        rows
    }
}

/// Adds to the line of the same product, or appends a new line with a fresh id.
fn add_line(cart: &mut Cart, next_line_item_id: &mut u64, product_id: u64, quantity: u64) {
    if let Some(line) = cart.line_items.iter_mut().find(|line| line.product_id == product_id) {
        line.quantity = line.quantity.saturating_add(quantity);
        return;
    }
    cart.line_items.push(LineItem { id: *next_line_item_id, product_id, quantity });
    *next_line_item_id += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_the_same_product_merges_quantity() {
        let mut carts = Carts::default();
        let id = carts.create(None);
        carts.add(id, 5104501700, 1).ok();
        carts.add(id, 5104501700, 2).ok();
        let cart = carts.get(id).unwrap_or_else(|| panic!("cart exists"));
        assert_eq!(cart.line_items.len(), 1);
        assert_eq!(cart.total_items(), 3);
    }

    #[test]
    fn prices_add_up_and_format_as_the_api_does() {
        let mut carts = Carts::default();
        let id = carts.create(None);
        carts.add(id, 5104501700, 2).ok();
        carts.add(id, 5104502000, 1).ok();
        let cart = carts.get(id).unwrap_or_else(|| panic!("cart exists"));
        assert_eq!(cart.subtotal_cents(), 2 * 4999 + 995);
        assert_eq!(formatted(cart.subtotal_cents()), "$109.93");
        assert_eq!(formatted(0), "$0.00");
        assert_eq!(formatted(995), "$9.95");
        assert_eq!(formatted(123_456_789), "$1,234,567.89");
    }

    #[test]
    fn unknown_product_is_rejected() {
        let mut carts = Carts::default();
        let id = carts.create(None);
        assert_eq!(carts.add(id, 1, 1), Err(CartError::UnknownProduct));
    }

    #[test]
    fn guest_cart_is_adopted_when_user_has_none() {
        let mut carts = Carts::default();
        let guest = carts.create(None);
        carts.add(guest, 5104501700, 1).ok();
        assert_eq!(carts.carry_over(Some(guest), "u"), Some(guest));
        assert_eq!(carts.user_cart("u"), Some(guest));
    }

    #[test]
    fn guest_lines_merge_into_existing_user_cart() {
        let mut carts = Carts::default();
        let owned = carts.create(Some("u"));
        carts.add(owned, 5104501700, 1).ok();
        let guest = carts.create(None);
        carts.add(guest, 5104501700, 2).ok();
        carts.add(guest, 5104501800, 1).ok();
        assert_eq!(carts.carry_over(Some(guest), "u"), Some(owned));
        assert!(carts.get(guest).is_none(), "guest cart is gone");
        let cart = carts.get(owned).unwrap_or_else(|| panic!("cart exists"));
        assert_eq!(cart.total_items(), 4);
        assert_eq!(cart.line_items.len(), 2);
    }
}
