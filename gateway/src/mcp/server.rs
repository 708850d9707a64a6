//! The MCP server: lists the tools and runs each call with the caller's key over
//! an [`Api`]. Over Streamable HTTP the key is the bearer of each HTTP request (so
//! a session never outlives its key); over stdio it is the one given at start.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use super::api::Api;
use super::tools;

/// Where a call's API key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// `Authorization: Bearer KEY` of the HTTP request that carried the call.
    Bearer,
    /// One key for the whole session (stdio).
    Fixed(Arc<str>),
}

#[derive(Clone)]
pub struct McpServer<A> {
    api: A,
    key: KeySource,
    faucet: bool,
}

impl<A: Api + Clone> McpServer<A> {
    /// `faucet`: whether `request_faucet` is listed.
    pub fn new(api: A, key: KeySource, faucet: bool) -> Self {
        McpServer { api, key, faucet }
    }

    fn key(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<str>, ErrorData> {
        match &self.key {
            KeySource::Fixed(k) => Ok(k.clone()),
            KeySource::Bearer => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| super::bearer(&p.headers))
                .map(Arc::from)
                .ok_or_else(|| {
                    ErrorData::invalid_request(
                        "missing API key: send `Authorization: Bearer YOUR_KEY`",
                        None,
                    )
                }),
        }
    }
}

impl<A: Api + Clone> ServerHandler for McpServer<A> {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "tenzro-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Tenzro: open inference, paid per token from your key's balance within its \
                 delegation scope. list_models to discover, estimate_cost before, chat or \
                 embed to run, get_balance and list_channels to watch the money, \
                 verify_receipt to check what a provider signed.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::list(self.faucet)))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::list(self.faucet)
            .into_iter()
            .find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let key = self.key(&context)?;
        if request.name == "request_faucet" && !self.faucet {
            return Err(ErrorData::invalid_params(
                "the faucet is disabled on this gateway",
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        Ok(tools::call(&self.api, &key, &request.name, args)
            .await
            .into())
    }
}
